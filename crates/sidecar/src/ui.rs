//! `/ui`: the approvals page, for people answering proposals from a browser.
//!
//! Why a page: a proposal waits for a person, and the person who gets the
//! message at 2 am should see what is asked and answer in one click, without
//! `curl` and a bearer header. It is plain server-rendered HTML on the control
//! listener: pending proposals with their evidence and approve/reject forms,
//! what each pipeline waits for and for how long, recent decisions and
//! outcomes, and the kill switch with pause/resume. No script, font, image or
//! any other resource is loaded; a `Content-Security-Policy` of
//! `default-src 'none'` (inline style only, forms to this origin only) makes
//! the browser refuse any that slipped in. Every text is HTML-escaped
//! ([`esc`]).
//!
//! Authentication (the control plane's token, [`crate::auth`]): a browser
//! cannot add a bearer header to a plain form, so the token is given once as
//! `GET /ui?token=…`; the daemon checks it, opens a session (a 128-bit id
//! drawn from the operating system's CSPRNG, mapped in memory to the token's
//! id, expiring after [`SESSION_TTL_MS`], at most [`MAX_SESSIONS`] at once:
//! the oldest goes first), sets the id as the cookie `selfheal_ui`
//! (`HttpOnly; SameSite=Strict; Path=/ui`, plus `Secure` when
//! `notify.public_url` is https) and redirects to `/ui`, dropping the token
//! from the address bar and history. The cookie carries nothing derived from
//! the token, and a restart ends every session. (A POST login form would also
//! keep the token out of the server's request line; `?token=` stays because
//! the notification links and the browser test use it, and the redirect
//! drops it at once.) The control guard accepts the cookie on `/ui` routes
//! only. Forms carry a CSRF token drawn at random when the daemon starts
//! (never sent anywhere but in the page), and a POST whose `Origin` is not
//! this host is refused: with SameSite=Strict and the guard's `Host` check
//! (DNS rebinding, see [`crate::auth`]) these are independent locks against a
//! cross-site form, which matters most when no token is configured
//! (loopback). After a form, the page shows the daemon's answer by a message
//! number (`/ui?said=N`, kept in memory), never text taken from the URL.

use crate::http::{AppState, Caller, Command, PendingView};
use crate::LockExt;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use std::fmt::Write;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The cookie that carries the control token for `/ui`.
pub const COOKIE: &str = "selfheal_ui";

/// What `/ui` shows, from the daemon's loop.
#[derive(Clone, Debug, Default)]
pub struct UiView {
    /// Pending proposals.
    pub pending: Vec<PendingView>,
    /// Recent decisions and outcomes, newest last, one readable line each
    /// ([`crate::provenance::one_line`]).
    pub recent: Vec<String>,
    /// The kill switch's reason while it is on.
    pub paused: Option<String>,
    /// Wall clock, Unix ms.
    pub now_ms: i64,
}

/// How long a `/ui` session lasts, ms (12 h).
pub const SESSION_TTL_MS: i64 = 12 * 3_600_000;
/// Most `/ui` sessions held at once; a new one beyond evicts the oldest.
pub const MAX_SESSIONS: usize = 64;
/// Most answers kept for `/ui?said=N`.
const MAX_SAID: usize = 32;

/// The page's per-daemon secrets and state: the CSRF token, the sessions
/// (cookie id → token id and expiry, Unix ms) and the recent answers shown
/// after a form.
#[derive(Debug)]
pub struct UiSecret {
    csrf: String,
    secure: bool,
    sessions: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
    said: std::sync::Mutex<(u64, std::collections::VecDeque<(u64, String)>)>,
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex(&b)
}

impl UiSecret {
    /// A fresh CSRF token from the operating system's random source; with
    /// `secure`, the session cookie is marked `Secure` (https public URL).
    pub fn random(secure: bool) -> UiSecret {
        UiSecret { csrf: random_hex(), secure, sessions: Default::default(), said: Default::default() }
    }

    /// Open a session for the caller with token id `token_id` at `now_ms`;
    /// returns the `Set-Cookie` value.
    pub fn open_session(&self, token_id: &str, now_ms: i64) -> String {
        let id = random_hex();
        let mut m = self.sessions.locked();
        m.retain(|_, (_, exp)| *exp > now_ms);
        while m.len() >= MAX_SESSIONS {
            let oldest = m.iter().min_by_key(|(_, (_, exp))| *exp).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        m.insert(id.clone(), (token_id.to_string(), now_ms + SESSION_TTL_MS));
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{secure}", SESSION_TTL_MS / 1000)
    }

    /// The token id of the live session whose id the request's [`COOKIE`]
    /// carries at `now_ms`, if any.
    pub fn session(&self, headers: &HeaderMap, now_ms: i64) -> Option<String> {
        let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
        let mut m = self.sessions.locked();
        for v in cookies.flat_map(|c| c.split(';')).filter_map(|c| c.trim().strip_prefix(&format!("{COOKIE}="))) {
            match m.get(v) {
                Some((tid, exp)) if *exp > now_ms => return Some(tid.clone()),
                Some(_) => {
                    m.remove(v);
                }
                None => {}
            }
        }
        None
    }

    fn remember(&self, msg: String) -> u64 {
        let mut g = self.said.locked();
        g.0 += 1;
        let n = g.0;
        if g.1.len() == MAX_SAID {
            g.1.pop_front();
        }
        g.1.push_back((n, msg));
        n
    }

    fn said(&self, n: u64) -> Option<String> {
        self.said.locked().1.iter().find(|(k, _)| *k == n).map(|(_, m)| m.clone())
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The bytes of lower-case or upper-case hex `s`; `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The control token of a first visit, `GET /ui?token=…`, as an
/// `Authorization` value.
pub fn credential(query: Option<&str>) -> Option<String> {
    query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|kv| kv.into_iter().find(|(k, _)| k == "token").map(|(_, v)| v))
        .map(|t| format!("Bearer {t}"))
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The `/ui` routes; mounted on the control router, behind its guard.
pub fn routes(secret: Arc<UiSecret>) -> Router<AppState> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/approvals/{id}", post(answer))
        .route("/ui/pause", post(pause))
        .route("/ui/resume", post(resume))
        .layer(Extension(secret))
}

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

fn html(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            // `same-origin`, not `no-referrer`: with the latter a browser sends
            // `Origin: null` on the page's own forms, which the origin check refuses.
            (header::REFERRER_POLICY, "same-origin"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

fn see(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_string())]).into_response()
}

fn said(secret: &UiSecret, msg: String) -> Response {
    see(&format!("/ui?said={}", secret.remember(msg)))
}

#[derive(Deserialize, Default)]
struct PageQuery {
    token: Option<String>,
    said: Option<u64>,
}

async fn page(
    State(s): State<AppState>,
    Extension(secret): Extension<Arc<UiSecret>>,
    Extension(caller): Extension<Caller>,
    q: Query<PageQuery>,
) -> Response {
    if q.token.is_some() {
        // The guard has checked it: open a session, keep the token out of the address bar.
        let cookie = secret.open_session(&caller.0, crate::now_ms());
        return (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/ui".to_string())])
            .into_response();
    }
    let said = q.said.and_then(|n| secret.said(n));
    let (tx, rx) = oneshot::channel();
    if s.cmd.send(Command::Ui(tx)).await.is_err() {
        return html(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down".into());
    }
    match rx.await {
        Ok(v) => html(StatusCode::OK, render(&v, &secret.csrf, said.as_deref())),
        Err(_) => html(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down".into()),
    }
}

fn secs(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// The page: pure, so it is tested without a server.
pub fn render(v: &UiView, csrf: &str, said: Option<&str>) -> String {
    let mut o = String::with_capacity(8192);
    o.push_str(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>selfheal: approvals</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>\
         body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:70em;color:#222}\
         h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.5em}\
         article{border:1px solid #bbb;border-radius:6px;padding:.6em 1em;margin:.8em 0;background:#fafafa}\
         dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.5em 0}dt{color:#555}dd{margin:0;overflow-wrap:anywhere}\
         button{font:inherit;padding:.3em 1.1em;margin-right:.5em;cursor:pointer}\
         .approve{background:#1a7f37;color:#fff;border:1px solid #116329}.reject{background:#fff;border:1px solid #999}\
         .said{background:#eef6ff;border:1px solid #9cc3ef;padding:.5em 1em}.paused{color:#b00;font-weight:bold}\
         ol{font:12px/1.5 ui-monospace,monospace;padding-left:1.5em}code{font:12px ui-monospace,monospace}\
         </style></head><body><h1>selfheal: approvals</h1>",
    );
    if let Some(m) = said {
        let _ = write!(o, "<p class=\"said\" id=\"said\">{}</p>", esc(m));
    }
    let hidden = format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf));
    o.push_str("<h2>Kill switch</h2>");
    match &v.paused {
        Some(why) => {
            let _ = write!(
                o,
                "<p class=\"paused\" id=\"killswitch\">Paused: nothing runs ({}).</p>\
                 <form method=\"post\" action=\"/ui/resume\">{hidden}<button>Resume acting</button></form>",
                esc(why)
            );
        }
        None => {
            let _ = write!(
                o,
                "<p id=\"killswitch\">Running: actions the guardrails allow are taken.</p>\
                 <form method=\"post\" action=\"/ui/pause\">{hidden}<button>Pause all acting</button></form>"
            );
        }
    }
    let _ = write!(o, "<h2>Waiting for a human ({})</h2>", v.pending.len());
    if v.pending.is_empty() {
        o.push_str("<p id=\"none\">No proposal waits.</p>");
    }
    for p in &v.pending {
        let waited = v.now_ms - p.proposed_ms;
        let left = p.expires_at_ms as i64 - v.now_ms;
        let _ = write!(
            o,
            "<article class=\"proposal\" id=\"p-{id}\"><h3>{action} on <em>{pipe}</em></h3>\
             <p>Pipeline {pipe} waits: proposed {waited} ago, expires in {left} \
             (then {action} does not run). Decision <code>{id}</code>.</p><dl><dt>Why it waits</dt><dd>{why}</dd>",
            id = esc(&p.id),
            action = esc(&p.action),
            pipe = esc(&p.pipeline),
            why = esc(&p.reason),
            waited = secs(waited),
            left = secs(left),
        );
        let ev = &p.evidence;
        let field = |k: &str| {
            ev.get(k).map(|x| match (k, x) {
                ("window", w) => crate::notify::window_words(w),
                ("score", serde_json::Value::Number(n)) => format!("{:.2}", n.as_f64().unwrap_or(f64::NAN)),
                ("metrics", serde_json::Value::Array(a)) => {
                    a.iter().filter_map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
                }
                (_, x) => x.as_str().map_or_else(|| x.to_string(), str::to_owned),
            })
        };
        for (label, key) in [
            ("State", "state"),
            ("Anomaly score", "score"),
            ("Signature", "signature"),
            ("Rule policy would", "rules"),
            ("Glue built-ins would", "glue_builtins"),
            ("Window", "window"),
            ("Evidence metrics", "metrics"),
        ] {
            if let Some(x) = field(key).filter(|x| x != "null" && !x.is_empty()) {
                let _ = write!(o, "<dt>{label}</dt><dd>{}</dd>", esc(&x));
            }
        }
        let _ = write!(
            o,
            "</dl><form method=\"post\" action=\"/ui/approvals/{id}\">{hidden}\
             <button class=\"approve\" name=\"decision\" value=\"approve\">Approve: run {action}</button>\
             <button class=\"reject\" name=\"decision\" value=\"reject\">Reject</button></form>\
             <p>Or from a shell: <code>selfheal approve {id}</code> / <code>selfheal reject {id}</code></p></article>",
            id = esc(&p.id),
            action = esc(&p.action),
        );
    }
    o.push_str("<h2>Recent decisions and outcomes</h2>");
    if v.recent.is_empty() {
        o.push_str("<p>None yet.</p>");
    } else {
        o.push_str("<ol id=\"recent\" reversed>");
        for line in v.recent.iter().rev() {
            let _ = write!(o, "<li>{}</li>", esc(line));
        }
        o.push_str("</ol>");
    }
    o.push_str("</body></html>\n");
    o
}

#[derive(Deserialize)]
struct FormBody {
    csrf: String,
    #[serde(default)]
    decision: Option<String>,
}

/// The form's CSRF token and the request's origin, checked; the form or a refusal.
fn check_form(headers: &HeaderMap, body: &Bytes, secret: &UiSecret) -> Result<FormBody, Box<Response>> {
    let refuse = |why: &str| Box::new(html(StatusCode::FORBIDDEN, format!("<p>{}</p>", esc(why))));
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        let o = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if o != host {
            return Err(refuse("refused: the form was posted from another site"));
        }
    }
    let form: FormBody = serde_urlencoded::from_bytes(body)
        .map_err(|e| Box::new(html(StatusCode::BAD_REQUEST, format!("<p>bad form: {}</p>", esc(&e.to_string())))))?;
    let ok: bool = subtle::ConstantTimeEq::ct_eq(form.csrf.as_bytes(), secret.csrf.as_bytes()).into();
    if !ok {
        return Err(refuse("refused: stale or missing form token; reload /ui"));
    }
    Ok(form)
}

async fn ask(s: &AppState, secret: &UiSecret, cmd: impl FnOnce(oneshot::Sender<(u16, String)>) -> Command) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.cmd.send(cmd(tx)).await.is_err() {
        return html(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down".into());
    }
    match rx.await {
        Ok((_, msg)) => said(secret, msg),
        Err(_) => html(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down".into()),
    }
}

async fn answer(
    State(s): State<AppState>,
    Extension(secret): Extension<Arc<UiSecret>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match check_form(&headers, &body, &secret) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let approve = match form.decision.as_deref() {
        Some("approve") => true,
        Some("reject") => false,
        _ => return html(StatusCode::BAD_REQUEST, "<p>decision must be approve or reject</p>".into()),
    };
    let by = caller.by("ui");
    ask(&s, &secret, |reply| Command::Answer { id, approve, by, reply }).await
}

async fn pause(
    State(s): State<AppState>,
    Extension(secret): Extension<Arc<UiSecret>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check_form(&headers, &body, &secret) {
        return *r;
    }
    let reason = caller.by("paused from /ui");
    ask(&s, &secret, |reply| Command::Pause { reason, reply }).await
}

async fn resume(
    State(s): State<AppState>,
    Extension(secret): Extension<Arc<UiSecret>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check_form(&headers, &body, &secret) {
        return *r;
    }
    ask(&s, &secret, Command::Resume).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_nothing_external_is_referenced() {
        let v = UiView {
            pending: vec![PendingView {
                id: "r-1".into(),
                pipeline: "<script>alert(1)</script>".into(),
                action: "scale_up".into(),
                reason: "low \"confidence\" & more".into(),
                expires_at_ms: 120_000,
                proposed_ms: 60_000,
                evidence: serde_json::json!({ "state": "x<y", "score": 0.9 }),
            }],
            recent: vec!["a <b> line".into()],
            paused: None,
            now_ms: 90_000,
        };
        let h = render(&v, "tok\"en", Some("<i>said</i>"));
        assert!(!h.contains("<script>") && h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{h}");
        assert!(h.contains("low &quot;confidence&quot; &amp; more") && h.contains("x&lt;y"), "{h}");
        assert!(h.contains("value=\"tok&quot;en\"") && h.contains("&lt;i&gt;said&lt;/i&gt;"));
        assert!(h.contains("proposed 30 s ago, expires in 30 s"), "{h}");
        assert!(!h.contains("http://") && !h.contains("https://") && !h.contains("src="), "no external URL: {h}");
    }

    proptest::proptest! {
        // A fixed seed, as every random stream in selfheal (see tests/fuzz.rs).
        #![proptest_config(proptest::test_runner::Config {
            cases: 2_000,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5e1f_0019),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]
        /// Outside input (the query string, the cookie header, a form body)
        /// never panics the page's parsers.
        #[test]
        fn parsers_of_outside_input_never_panic(q in ".{0,64}", c in proptest::collection::vec(proptest::num::u8::ANY, 0..64), b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut h = HeaderMap::new();
            if let Ok(v) = axum::http::HeaderValue::from_bytes(&c) {
                h.insert(header::COOKIE, v);
            }
            let secret = UiSecret::random(false);
            let _ = credential(Some(&q));
            proptest::prop_assert!(secret.session(&h, 0).is_none());
            let _ = unhex(&q);
            let secret = UiSecret { csrf: "x".into(), ..UiSecret::random(false) };
            let r = check_form(&HeaderMap::new(), &Bytes::from(b), &secret);
            proptest::prop_assert!(r.is_err() || r.is_ok_and(|f| f.csrf == "x"));
        }
    }

    #[test]
    fn the_cookie_is_a_random_session_id_mapped_server_side() {
        assert_eq!(credential(Some("token=a%20b&said=1")).as_deref(), Some("Bearer a b"));
        assert_eq!(credential(None), None);
        let s = UiSecret::random(false);
        let cookie = s.open_session("1a2b3c4d", 0);
        let id = cookie.split(';').next().unwrap().strip_prefix(&format!("{COOKIE}=")).unwrap().to_string();
        assert_eq!(id.len(), 32, "128 bits: {cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("x=1; {COOKIE}={id}").parse().unwrap());
        assert_eq!(s.session(&h, 1).as_deref(), Some("1a2b3c4d"));
        assert_eq!(s.session(&h, SESSION_TTL_MS), None, "expired");
        assert_eq!(s.session(&h, 1), None, "and forgotten");
        h.insert(header::COOKIE, format!("{COOKIE}={}", hex(b"the-token")).parse().unwrap());
        assert_eq!(s.session(&h, 1), None, "the old hex-of-the-token cookie opens nothing");
        // Bounded: the oldest session goes first.
        let first = s.open_session("a", 10);
        for i in 0..MAX_SESSIONS as i64 {
            s.open_session("b", 20 + i);
        }
        h.insert(header::COOKIE, first.split(';').next().unwrap().parse().unwrap());
        assert_eq!(s.session(&h, 100), None, "evicted by newer sessions");
        assert_eq!(s.sessions.lock().unwrap().len(), MAX_SESSIONS);
        assert!(UiSecret::random(true).open_session("a", 0).ends_with("; Secure"));
        // Answers are shown by number, from memory only.
        let n = s.remember("approved r-1".into());
        assert_eq!(s.said(n).as_deref(), Some("approved r-1"));
        assert_eq!(s.said(n + 1), None);
    }
}
