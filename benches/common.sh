# Shared by benches/ingest.sh and benches/rss.sh (sourced, not run): the binary
# under test, a free loopback port, and a temp dir whose daemon is stopped and
# whose files are removed on exit. The sourcing script defines `die`.

command -v curl >/dev/null || die "curl is missing (apt-get install -y curl)"

if [ -n "${SELFHEAL_BIN:-}" ]; then
    bin=$SELFHEAL_BIN # a binary built elsewhere (to compare two builds)
else
    printf '==> cargo build --release\n'
    cargo build --release --quiet
    bin=target/release/selfheal
fi

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        local p
        while :; do
            p=$((20000 + RANDOM % 40000))
            ss -ltn "sport = :$p" | grep -q LISTEN || break
        done
        echo "$p"
    fi
}

tmp=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
