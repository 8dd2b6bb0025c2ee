# syntax=docker/dockerfile:1
#
# The selfheal sidecar image: the release binary on distroless.
#
#   docker build -t selfheal:0.1.0 .
#   docker run --read-only -p 9477:9477 \
#     -v "$PWD/sidecar.toml:/etc/selfheal/sidecar.toml:ro" selfheal:0.1.0
#
# (The config's [daemon] listen must be "0.0.0.0:9477" to be reached from
# outside the container; /var/lib/selfheal gets an anonymous volume.)
#
# Runtime: gcr.io/distroless/cc-debian12 (glibc, libgcc_s, CA certificates; no
# shell, no package manager), as user 65532 ("nonroot"), with nothing to write
# on the root file system: the only writable path is the state dir,
# /var/lib/selfheal (provenance log, Q-table checkpoint, PAUSE), a volume.
# The models are compiled into the binary. deploy/README.md has the Kubernetes
# side; tests/run.sh lints this file with hadolint and checkov.

# Build on the same Debian release as the runtime, so the binary's glibc
# (2.36) is the one it runs on.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The caches speed up a rebuild; the binary is copied out of the cached
# target dir in the same step. Symbols are stripped (38 -> 30 MB); panic
# messages keep their file and line.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --bin selfheal \
    && mkdir -p /out/state \
    && cp target/release/selfheal /out/selfheal

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="selfheal" \
      org.opencontainers.image.description="Self-healing control agent for data pipelines (sidecar daemon)" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /out/selfheal /usr/local/bin/selfheal
# An empty state dir owned by the runtime user: a volume mounted here (or
# Docker's anonymous volume below) starts out writable by it.
COPY --from=build --chown=65532:65532 /out/state /var/lib/selfheal
VOLUME ["/var/lib/selfheal"]
WORKDIR /var/lib/selfheal
USER 65532:65532
# The metrics listener ([daemon] listen): /metrics, /healthz, /readyz. The
# control listener (9478) stays on loopback and is not exposed.
EXPOSE 9477
# No HEALTHCHECK command: the image has no shell or HTTP client to run one,
# and Kubernetes ignores Docker's HEALTHCHECK; the Deployment's probes call
# /healthz and /readyz instead (deploy/base/deployment.yaml).
# checkov:skip=CKV_DOCKER_2: no HTTP client in a distroless image; Kubernetes liveness/readiness probes on /healthz and /readyz do this job
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/selfheal"]
CMD ["run", "--config", "/etc/selfheal/sidecar.toml"]
