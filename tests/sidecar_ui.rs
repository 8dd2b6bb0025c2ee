//! The approvals page `/ui` in headless Chromium (Debian's `chromium`), driven
//! over the DevTools protocol: a proposal appears, its approve button runs it,
//! the page shows the outcome, and the page makes no request outside the
//! daemon (the DevTools network log, with every host name mapped to nowhere).
//! Also, over plain HTTP: the token, cookie and CSRF locks and the headers.
//!
//! The DevTools protocol runs over a WebSocket; the few lines of client it
//! needs (RFC 6455 text frames, masked from the client) are below, so the test
//! needs no WebSocket crate.
//!
//! `SELFHEAL_UI_SCREENSHOT=path.png` also saves a screenshot of the page there
//! (the README's `docs/ui.png` is made so).

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A headless Chromium with a DevTools WebSocket, killed when dropped.
struct Browser {
    child: Child,
    ws: Ws,
    next: u64,
    session: String,
    /// Every URL the page requested (Network.requestWillBeSent).
    requests: Vec<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        // Any name resolves nowhere: a page that reaches out fails (and the
        // network log below still names what it tried).
        let mut child = headless_chromium(profile, "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
            .args(["--remote-debugging-port=0", "--window-size=1100,900"])
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let url = loop {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "chromium exited without a DevTools URL");
            if let Some(u) = line.trim().strip_prefix("DevTools listening on ") {
                break u.to_string();
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        let ws = Ws::connect(&url);
        let mut b = Browser { child, ws, next: 0, session: String::new(), requests: Vec::new() };
        let target = b.call("Target.createTarget", serde_json::json!({ "url": "about:blank" }));
        let tid = target["targetId"].as_str().unwrap().to_string();
        let att = b.call("Target.attachToTarget", serde_json::json!({ "targetId": tid, "flatten": true }));
        b.session = att["sessionId"].as_str().unwrap().to_string();
        b.call("Network.enable", serde_json::json!({}));
        b.call("Page.enable", serde_json::json!({}));
        b
    }

    /// Send a command (to the page once attached) and wait for its result,
    /// noting events meanwhile.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        self.ws.send(&msg.to_string());
        loop {
            let m = self.read();
            if m["id"].as_u64() == Some(id) {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
        }
    }

    fn read(&mut self) -> serde_json::Value {
        let m: serde_json::Value = serde_json::from_str(&self.ws.recv()).expect("DevTools JSON");
        if m["method"] == "Network.requestWillBeSent" {
            self.requests.push(m["params"]["request"]["url"].as_str().unwrap_or("?").to_string());
        }
        m
    }

    /// Mark the current document, so [`Browser::wait_new_page`] can tell
    /// when another has replaced it.
    fn mark(&mut self) {
        self.eval("window.__before = 1; true");
    }

    /// Wait until a new document (unmarked) has loaded completely.
    fn wait_new_page(&mut self) {
        let start = Instant::now();
        loop {
            let js = "typeof window.__before === 'undefined' && document.readyState === 'complete'";
            if self.eval(js) == true {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no new page loaded");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.mark();
        self.call("Page.navigate", serde_json::json!({ "url": url }));
        self.wait_new_page();
    }

    /// Evaluate `js` in the page; its value.
    fn eval(&mut self, js: &str) -> serde_json::Value {
        let r = self.call("Runtime.evaluate", serde_json::json!({ "expression": js, "returnByValue": true }));
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Click what `selector` finds, then wait for the page it leads to.
    fn click(&mut self, selector: &str) {
        self.mark();
        let js = format!("document.querySelector({}).click(); true", serde_json::json!(selector));
        assert_eq!(self.eval(&js), true);
        self.wait_new_page();
    }
}

/// The client side of a WebSocket, text frames only.
struct Ws {
    s: TcpStream,
}

impl Ws {
    fn connect(url: &str) -> Ws {
        let rest = url.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = TcpStream::connect(host).expect("DevTools port");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).expect("handshake answer");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "WebSocket handshake refused: {head}");
        Ws { s }
    }

    fn send(&mut self, text: &str) {
        let p = text.as_bytes();
        let mut f = vec![0x81u8];
        match p.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x5a, 0x13, 0xc7, 0x2e];
        f.extend_from_slice(&mask);
        f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    /// The next text message (continuation frames joined).
    fn recv(&mut self) -> String {
        let mut msg = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h).expect("a DevTools frame");
            let fin = h[0] & 0x80 != 0;
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).unwrap();
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).unwrap();
                len = u64::from_be_bytes(b);
            }
            let mut p = vec![0u8; len as usize];
            self.s.read_exact(&mut p).unwrap();
            msg.extend_from_slice(&p);
            if fin {
                return String::from_utf8(msg).expect("UTF-8 text");
            }
        }
    }
}

/// Standard base64 (the screenshot's encoding).
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').map(val).collect();
    bytes
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, v)| n | u32::from(*v) << (18 - 6 * i));
            let out = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.into_iter().take(c.len() - 1)
        })
        .collect()
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn approving_from_ui_in_headless_chromium_runs_the_proposal_and_shows_the_outcome() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    // Recommend mode on the simulator: proposals come within seconds and stay a minute.
    let cfg = "[source]\nkind = \"simulator\"\ntick_ms = 50\npipelines = 2\n\
               [guard]\nmode = \"recommend\"\napproval_ttl_secs = 120\n\
               [guard.budget]\nactions_per_hour = 1000\ncooldown_secs = 0\nblast_radius = 10\n";
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(30), "a proposal in GET /approvals", || !d.approvals().is_empty());

    // The locks, over plain HTTP.
    let r = http(&d.control, "GET", "/ui", &[], "").unwrap();
    assert_eq!(r.status, 401, "no token: {}", r.body);
    assert!(r.body.contains("/ui?token="), "{}", r.body);
    let r = http(&d.control, "GET", "/ui?token=wrong", &[], "").unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(&d.control, "GET", &format!("/ui?token={}", d.token), &[], "").unwrap();
    assert_eq!((r.status, header(&r, "location")), (303, Some("/ui")), "{:?}", r.headers);
    let cookie = header(&r, "set-cookie").expect("a cookie").to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains(&d.token),
        "{cookie}"
    );
    let jar = cookie.split(';').next().unwrap().to_string();
    let r = http(&d.control, "GET", "/ui", &[("Cookie", &jar)], "").unwrap();
    assert_eq!(r.status, 200, "the cookie lets the page in: {}", r.body);
    let csp = header(&r, "content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("form-action 'self'"), "{csp}");
    assert!(!r.body.contains("http://") && !r.body.contains("https://"), "no external URL in the page");
    assert!(!r.body.contains("<script"), "no script");
    let pid = d.approvals()[0].0.clone();
    let form = [("Cookie", jar.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let r = http(&d.control, "POST", &format!("/ui/approvals/{pid}"), &form, "csrf=forged&decision=approve").unwrap();
    assert_eq!(r.status, 403, "a form without the page's CSRF token: {}", r.body);
    let csrf = r#"name="csrf" value=""#;
    let page = http(&d.control, "GET", "/ui", &[("Cookie", &jar)], "").unwrap().body;
    let tok = &page[page.find(csrf).unwrap() + csrf.len()..];
    let tok = &tok[..tok.find('"').unwrap()];
    let mut cross = form.to_vec();
    cross.push(("Origin", "http://evil.example"));
    let r = http(&d.control, "POST", &format!("/ui/approvals/{pid}"), &cross, &format!("csrf={tok}&decision=approve"))
        .unwrap();
    assert_eq!(r.status, 403, "a form posted from another site: {}", r.body);
    assert!(d.approvals().iter().any(|p| p.0 == pid), "nothing refused was answered");

    // The browser.
    let profile = work.path().join("chromium-profile");
    let mut b = Browser::start(&profile);
    let base = format!("http://{}", d.control);
    b.navigate(&format!("{base}/ui?token={}", d.token));
    let href = b.eval("location.href");
    assert_eq!(
        href,
        format!("{base}/ui"),
        "the token left the address bar; page: {}",
        b.eval("document.body.innerText")
    );
    let n = b.eval("document.querySelectorAll('article.proposal').length").as_u64().unwrap();
    assert!(n >= 1, "a proposal on the page");
    let id = b.eval("document.querySelector('article.proposal').id.slice(2)").as_str().unwrap().to_string();
    let text = b.eval(&format!("document.getElementById('p-{id}').innerText")).as_str().unwrap().to_string();
    assert!(text.contains("Why it waits") && text.contains("State") && text.contains("expires in"), "{text}");
    assert!(text.contains(&format!("selfheal approve {id}")), "{text}");
    b.click(&format!("#p-{id} button.approve"));
    let said = b.eval("(document.getElementById('said') || {}).innerText || ''").as_str().unwrap().to_string();
    let body = b.eval("location.href + ' ' + document.body.innerText");
    assert!(said.contains("approved: running") && said.contains(&id), "{said}: {body}");
    // The outcome shows once the action has run.
    let start = Instant::now();
    loop {
        let recent = b.eval("(document.getElementById('recent') || {}).innerText || ''").as_str().unwrap().to_string();
        if recent.lines().any(|l| l.contains(&format!("{id} outcome succeeded"))) {
            assert!(recent.contains(&format!("{id} approved by ui")), "{recent}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no outcome for {id} on the page:\n{recent}");
        std::thread::sleep(Duration::from_millis(300));
        b.navigate(&format!("{base}/ui"));
    }
    assert!(!d.approvals().iter().any(|p| p.0 == id), "{id} no longer waits");
    // `selfheal log --waiting` tells the same: what waits, not what was answered.
    let log = state.join("provenance.jsonl");
    let mut said = String::new();
    wait_for(Duration::from_secs(10), "selfheal log --waiting lists an open proposal", || {
        let open: Vec<String> = d.approvals().into_iter().map(|p| p.0).collect();
        let out = selfheal(&["log", "--log", log.to_str().unwrap(), "--waiting", "--ttl-secs", "120"]);
        said = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && open.iter().any(|o| said.contains(&format!("({o};")))
    });
    assert!(said.contains("waits for a human") && said.contains("proposed") && said.contains("expires in"), "{said}");
    assert!(!said.contains(&format!("({id};")), "the approved {id} does not wait: {said}");
    // Pause and resume from the page.
    b.click("#killswitch + form button");
    assert!(b.eval("document.getElementById('killswitch').innerText").as_str().unwrap().starts_with("Paused"));
    b.click("#killswitch + form button");
    assert!(b.eval("document.getElementById('killswitch').innerText").as_str().unwrap().starts_with("Running"));
    let html = b.eval("document.documentElement.outerHTML").as_str().unwrap().to_string();
    assert!(!html.contains("http://") && !html.contains("https://"), "an external URL in the page");

    if let Ok(path) = std::env::var("SELFHEAL_UI_SCREENSHOT") {
        b.navigate(&format!("{base}/ui"));
        let shot = b.call("Page.captureScreenshot", serde_json::json!({ "format": "png" }));
        std::fs::write(&path, base64(shot["data"].as_str().unwrap())).unwrap();
    }
    let shot = b.call("Page.captureScreenshot", serde_json::json!({ "format": "png" }));
    let png = base64(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "a screenshot renders");

    // Nothing outside the daemon was asked for.
    assert!(b.requests.len() >= 5, "the network log saw the page's requests: {:?}", b.requests);
    let outside: Vec<&String> = b.requests.iter().filter(|u| !u.starts_with(&format!("{base}/"))).collect();
    assert!(outside.is_empty(), "requests outside the daemon: {outside:?}");
    drop(b);
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
    let log = d.log();
    assert_eq!(outcome_of(&log.records).get(&id).map(String::as_str), Some("succeeded"));
}
