//! Who may use the control plane, and where it may listen.
//!
//! The daemon has two listeners (see [`crate::http`]): one for `/metrics` and
//! the health probes, which Prometheus and Kubernetes must reach and which may
//! be exposed, and one for the control plane (`/approvals`, `/pause`,
//! `/resume`, `/ingest`), which can start or stop actions on production jobs.
//! The control plane needs `Authorization: Bearer <token>`:
//!
//! - **401** when the header is missing or is not a bearer token (with
//!   `WWW-Authenticate: Bearer`), **403** when a token is given but is not the
//!   configured one. The two are kept apart so a client can tell "I forgot the
//!   token" from "I have the wrong token"; neither says anything about the token.
//! - Comparison is in constant time, and of SHA-256 digests rather than the raw
//!   strings, so neither the content nor the length of the token leaks through
//!   timing ([`subtle::ConstantTimeEq`] on two 32-byte digests).
//! - Logs and the provenance log name a caller by its [`Token::id`]: the first
//!   8 hex digits of the token's SHA-256. Enough to tell two tokens apart and
//!   to match a log line to a secret you hold, useless to recover the token.
//!
//! Without a control token the control plane is open, so it may only listen
//! on a loopback address ([`check_exposure`]): the daemon refuses to start
//! otherwise, and `selfheal validate` reports the same problem.
//!
//! Loopback is not enough against a browser: a page on `evil.example` whose
//! name is re-pointed at 127.0.0.1 (DNS rebinding) talks to the daemon as its
//! own origin, and any site can send a "simple" cross-site POST (`text/plain`)
//! without reading the answer. So every control request must also name the
//! daemon in its `Host` header ([`AllowedHosts`]: the control listen address,
//! `localhost`, `127.0.0.1` or `[::1]` on its port, or the host of
//! `notify.public_url`), may not carry a foreign `Origin`, and the JSON routes
//! take only `Content-Type: application/json` (which a cross-site form cannot
//! send without a CORS preflight, which the daemon never grants).

use crate::config::DaemonConfig;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// A bearer token, kept only as its digest.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
    id: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token, never its full digest.
        write!(f, "Token({})", self.id)
    }
}

fn sha256(s: &str) -> [u8; 32] {
    let d = Sha256::digest(s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// The short, non-reversible fingerprint of a token (first 8 hex digits of
/// its SHA-256), as logs name callers.
pub fn token_id(token: &str) -> String {
    sha256(token)[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl Token {
    /// A token from its secret text.
    pub fn new(secret: &str) -> Token {
        Token { digest: sha256(secret), id: token_id(secret) }
    }

    /// The fingerprint logs and provenance records name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Does `given` equal this token? Constant time in the content and the
    /// length of `given` (both sides are hashed to 32 bytes first).
    pub fn matches(&self, given: &str) -> bool {
        bool::from(self.digest.ct_eq(&sha256(given)))
    }
}

/// Where the control token came from, for the startup log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `[daemon] control_token_file`.
    File(PathBuf),
    /// `[daemon] control_token_env`.
    Env(String),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) => write!(f, "file {} (daemon.control_token_file)", p.display()),
            TokenSource::Env(v) => write!(f, "environment variable {v} (daemon.control_token_env)"),
        }
    }
}

/// Why the control plane cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file could not be read.
    #[error("daemon.control_token_file: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file holds nothing but whitespace.
    #[error("daemon.control_token_file: {0} is empty")]
    Empty(PathBuf),
    /// The control plane would be open to other hosts.
    #[error(
        "daemon.control_listen is {addr}, not a loopback address, and no control token is set: anyone who can \
         reach that port could approve actions and pause the daemon. Set daemon.control_token_file (a file \
         readable only by the daemon) or the environment variable {env} (daemon.control_token_env), or listen \
         on 127.0.0.1"
    )]
    Exposed {
        /// The control address.
        addr: SocketAddr,
        /// The environment variable that would hold the token.
        env: String,
    },
}

/// A warning about how the token is stored (the daemon logs it).
pub type Warning = String;

/// Read a token file: its content without surrounding whitespace (a trailing
/// newline is what `echo secret > file` leaves). Warns when the file can be
/// read by users other than its owner's group, the way `ssh` does about keys.
pub fn read_token_file(path: &Path) -> Result<(String, Option<Warning>), AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: path.to_path_buf(), source })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(AuthError::Empty(path.to_path_buf()));
    }
    Ok((secret.to_string(), world_readable(path)))
}

#[cfg(unix)]
fn world_readable(path: &Path) -> Option<Warning> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "daemon.control_token_file {} is readable by every user (mode {:03o}); `chmod 600` it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn world_readable(_path: &Path) -> Option<Warning> {
    None
}

/// The control token of a configuration: the file if `control_token_file` is
/// set (it must then be readable and non-empty), else the environment variable
/// `control_token_env` if it is set and non-empty, else none. `env` looks a
/// variable up (`std::env::var` in the daemon; a map in tests).
pub fn resolve(
    d: &DaemonConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<(Token, TokenSource, Option<Warning>)>, AuthError> {
    if let Some(path) = &d.control_token_file {
        let (secret, warning) = read_token_file(path)?;
        return Ok(Some((Token::new(&secret), TokenSource::File(path.clone()), warning)));
    }
    match env(&d.control_token_env).map(|v| v.trim().to_string()) {
        Some(v) if !v.is_empty() => Ok(Some((Token::new(&v), TokenSource::Env(d.control_token_env.clone()), None))),
        _ => Ok(None),
    }
}

/// Refuse a control plane that would be reachable from other hosts with no
/// token. Loopback (127.0.0.0/8, ::1) without a token is allowed: only
/// processes on this host can reach it, which is the sidecar's own pod.
pub fn check_exposure(d: &DaemonConfig, token: Option<&Token>) -> Result<(), AuthError> {
    if token.is_none() && !d.control_listen.ip().is_loopback() {
        return Err(AuthError::Exposed { addr: d.control_listen, env: d.control_token_env.clone() });
    }
    Ok(())
}

/// What a control request's `Authorization` header proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Let through; the caller's token id (`none` when no token is configured).
    Allowed(String),
    /// 401: no bearer token given.
    Missing,
    /// 403: a bearer token that is not a configured one.
    Wrong(String),
}

/// The tokens a control route accepts: the control token and, on `/ingest`
/// only, the legacy ingest token of `[source] token_env`. With none of them
/// configured, everything is allowed (the listener is loopback then).
pub fn check(accepted: &[&Token], authorization: Option<&str>) -> Access {
    if accepted.is_empty() {
        return Access::Allowed("none".into());
    }
    let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) else {
        return Access::Missing;
    };
    // Check every token, even after a match, so the time taken does not say which matched.
    let mut hit = None;
    for t in accepted {
        if t.matches(given) && hit.is_none() {
            hit = Some(t.id().to_string());
        }
    }
    match hit {
        Some(id) => Access::Allowed(id),
        None => Access::Wrong(token_id(given)),
    }
}

/// The `Host` names the control plane answers to (DNS rebinding defence,
/// see the module doc). Compared case-insensitively, as `host[:port]`
/// authorities (RFC 9110 §7.2).
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts {
    names: Vec<String>,
    /// With an unspecified listen address (0.0.0.0 or ::, a token is required
    /// then), any IP literal on this port: an IP-literal `Host` cannot be
    /// rebound, and the machine's addresses are not known here.
    any_ip_on_port: Option<u16>,
    https: bool,
}

impl AllowedHosts {
    /// The names of a control plane listening on `listen` (its actual,
    /// bound address) and reached from outside as `public_url` (an
    /// `http://` or `https://` URL, `notify.public_url`), if any.
    pub fn new(listen: SocketAddr, public_url: Option<&str>) -> AllowedHosts {
        let port = listen.port();
        let mut names =
            vec![listen.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")];
        if let Some(u) = public_url {
            let (scheme, rest) = u.split_once("://").unwrap_or(("http", u));
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_ascii_lowercase();
            if !authority.is_empty() {
                let default_port = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
                // A browser leaves the default port out of `Host` and `Origin`.
                match authority.strip_suffix(&format!(":{default_port}")) {
                    Some(bare) => names.push(bare.to_string()),
                    None if !has_port(&authority) => names.push(format!("{authority}:{default_port}")),
                    None => {}
                }
                names.push(authority);
            }
        }
        let any_ip_on_port = listen.ip().is_unspecified().then_some(port);
        let https = public_url.is_some_and(|u| u.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://")));
        AllowedHosts { names: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(), any_ip_on_port, https }
    }

    /// Whether the daemon is reached over https (`notify.public_url`): its
    /// `/ui` cookie is then `Secure`.
    pub fn https(&self) -> bool {
        self.https
    }

    /// Whether a `Host` header value names this daemon.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if self.names.contains(&host) {
            return true;
        }
        match (self.any_ip_on_port, host.parse::<SocketAddr>()) {
            (Some(port), Ok(a)) => a.port() == port,
            _ => false,
        }
    }

    /// Whether an `Origin` header value (`scheme://host[:port]`) is this
    /// daemon; `null` and anything else is foreign.
    pub fn allows_origin(&self, origin: &str) -> bool {
        match origin.trim().split_once("://") {
            Some((scheme, host)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
                self.allows_host(host)
            }
            _ => false,
        }
    }
}

fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((h, p)) => {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (!h.starts_with('[') || h.ends_with(']'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_daemons_own_names_pass_the_host_check() {
        let h = AllowedHosts::new("127.0.0.1:19478".parse().unwrap(), None);
        for ok in ["127.0.0.1:19478", "localhost:19478", "LOCALHOST:19478", "[::1]:19478"] {
            assert!(h.allows_host(ok), "{ok}");
        }
        for bad in ["evil.example:19478", "127.0.0.1:19479", "localhost", "127.0.0.1", "10.0.0.5:19478", ""] {
            assert!(!h.allows_host(bad), "{bad}");
        }
        assert!(h.allows_origin("http://localhost:19478"));
        assert!(!h.allows_origin("http://evil.example:19478") && !h.allows_origin("null"));
        let p = AllowedHosts::new("127.0.0.1:19478".parse().unwrap(), Some("https://Selfheal.internal/base/"));
        assert!(p.allows_host("selfheal.internal") && p.allows_host("selfheal.internal:443"));
        assert!(p.allows_origin("https://selfheal.internal") && !p.allows_host("selfheal.internal.evil.example"));
        let p = AllowedHosts::new("127.0.0.1:19478".parse().unwrap(), Some("http://ops.example:8080"));
        assert!(p.allows_host("ops.example:8080") && !p.allows_host("ops.example"));
        let any = AllowedHosts::new("0.0.0.0:9478".parse().unwrap(), None);
        assert!(any.allows_host("10.0.0.5:9478") && any.allows_host("[fe80::1]:9478"));
        assert!(!any.allows_host("evil.example:9478") && !any.allows_host("10.0.0.5:80"));
    }

    #[test]
    fn a_token_matches_itself_only_and_its_id_is_short_and_stable() {
        let t = Token::new("s3cret");
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cre") && !t.matches("s3cret ") && !t.matches(""));
        assert_eq!(t.id().len(), 8);
        assert_eq!(t.id(), token_id("s3cret"));
        assert_ne!(t.id(), token_id("other"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn missing_wrong_and_right_tokens_are_told_apart() {
        let t = Token::new("right");
        assert_eq!(check(&[], None), Access::Allowed("none".into()));
        assert_eq!(check(&[&t], None), Access::Missing);
        assert_eq!(check(&[&t], Some("Basic cmlnaHQ=")), Access::Missing);
        assert_eq!(check(&[&t], Some("Bearer wrong")), Access::Wrong(token_id("wrong")));
        assert_eq!(check(&[&t], Some("Bearer right")), Access::Allowed(t.id().into()));
        let legacy = Token::new("ingest");
        assert_eq!(check(&[&t, &legacy], Some("Bearer ingest")), Access::Allowed(legacy.id().into()));
    }

    #[test]
    fn an_exposed_control_plane_needs_a_token() {
        let mut d = DaemonConfig::default();
        assert!(check_exposure(&d, None).is_ok(), "loopback without a token is allowed");
        d.control_listen = "0.0.0.0:0".parse().unwrap();
        let e = check_exposure(&d, None).unwrap_err().to_string();
        assert!(e.contains("daemon.control_listen") && e.contains("daemon.control_token_file"), "{e}");
        assert!(e.contains("SELFHEAL_CONTROL_TOKEN"), "{e}");
        assert!(check_exposure(&d, Some(&Token::new("x"))).is_ok());
    }

    #[test]
    fn the_file_wins_over_the_environment_and_a_loose_mode_is_warned() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut d = DaemonConfig { control_token_file: Some(path.clone()), ..DaemonConfig::default() };
        let env = |_: &str| Some("from-env".to_string());
        let (t, src, warn) = resolve(&d, env).unwrap().unwrap();
        assert!(t.matches("from-file"), "trailing newline trimmed, file wins");
        assert_eq!(src, TokenSource::File(path.clone()));
        assert!(warn.unwrap().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(resolve(&d, env).unwrap().unwrap().2.is_none());
        std::fs::write(&path, " \n").unwrap();
        assert!(resolve(&d, env).unwrap_err().to_string().contains("is empty"));
        d.control_token_file = None;
        let (t, src, _) = resolve(&d, env).unwrap().unwrap();
        assert!(t.matches("from-env"));
        assert_eq!(src, TokenSource::Env("SELFHEAL_CONTROL_TOKEN".into()));
        assert!(resolve(&d, |_| Some(String::new())).unwrap().is_none(), "an empty variable is no token");
    }
}
