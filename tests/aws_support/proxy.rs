//! A fault-injecting HTTP/1.1 proxy in front of moto (std threads only).
//!
//! Every connection carries one request: the proxy reads it, forwards it to
//! moto with `Connection: close`, and answers with `Connection: close`, so
//! the client's pool never reuses a connection the proxy is about to close.
//! It names each request by its operation (`X-Amz-Target: AWSGlue.Op` for
//! Glue's awsJson1.1, the form field `Action=Op` for CloudWatch's query
//! protocol) and counts what it received and what it forwarded. On demand it
//! answers the next N requests of an operation (or of any) with a 5xx, with
//! the service's own throttling error, or forwards them and holds the answer
//! back (the server applied the call; the client gave up waiting).
//!
//! [`Proxy::rewrite`] rewrites the JSON body of every successful answer to
//! one operation (moto's job runs never fail, and never with an
//! `ErrorMessage`; a test makes them fail in the answer the client reads).
//!
//! [`Proxy::gate`] holds back `GetMetricData` while the test publishes one
//! window, whose metrics span two namespaces and so two `PutMetricData`
//! calls: a poll between them would read half a window.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// What to do to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this 5xx status, without forwarding.
    Status(u16),
    /// Answer with the service's throttling error, without forwarding.
    Throttle,
    /// Forward, then hold the answer back this long.
    Slow(Duration),
}

struct Rule {
    op: Option<String>,
    fault: Fault,
    left: u32,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// `glue` or `cloudwatch` (or `other`).
    pub service: &'static str,
    /// The operation (`StartJobRun`, `GetMetricData`, ...).
    pub op: String,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// The request's body (lossy UTF-8): which metrics a `GetMetricData` asked for.
    pub body: String,
}

/// A rewrite of an answer's JSON body.
type RewriteFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    forwarded: Mutex<BTreeMap<String, u32>>,
    gate: RwLock<()>,
    rewrites: Mutex<Vec<(String, RewriteFn)>>,
}

/// The proxy; stops accepting when dropped.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    addr: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy to `upstream` (`127.0.0.1:PORT`) on a free loopback port.
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st, up) = (shared.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (sh, up) = (sh.clone(), up.clone());
                std::thread::spawn(move || serve(conn, &up, &sh));
            }
        });
        Proxy { url: format!("http://{addr}"), addr, shared, stop }
    }

    /// Apply `fault` to the next `times` requests of `op` (any operation if None).
    /// Rules apply in the order they were added, each until used up.
    pub fn inject(&self, op: Option<&str>, fault: Fault, times: u32) {
        self.shared.rules.lock().unwrap().push(Rule { op: op.map(str::to_string), fault, left: times });
    }

    /// Faults not applied yet.
    pub fn faults_left(&self) -> u32 {
        self.shared.rules.lock().unwrap().iter().map(|r| r.left).sum()
    }

    /// Requests of `op` received (faulted or not).
    pub fn received(&self, op: &str) -> usize {
        self.shared.seen.lock().unwrap().iter().filter(|s| s.op == op).count()
    }

    /// Requests of `op` that reached moto.
    pub fn forwarded(&self, op: &str) -> u32 {
        self.shared.forwarded.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Rewrite the body of every successful (2xx) answer to `op` with `f`
    /// until [`Proxy::clear_rewrites`]; rewrites of one operation apply in
    /// the order they were added. `Content-Length` is recomputed.
    pub fn rewrite(&self, op: &str, f: impl Fn(&str) -> String + Send + Sync + 'static) {
        self.shared.rewrites.lock().unwrap().push((op.to_string(), Arc::new(f)));
    }

    /// Drop every rewrite: answers pass unchanged again.
    pub fn clear_rewrites(&self) {
        self.shared.rewrites.lock().unwrap().clear();
    }

    /// Hold `GetMetricData` back until the guard drops.
    pub fn gate(&self) -> RwLockWriteGuard<'_, ()> {
        self.shared.gate.write().unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// A parsed request: head lines and body.
struct Request {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// (service, operation).
    fn operation(&self) -> (&'static str, String) {
        if let Some(t) = self.header("x-amz-target") {
            let op = t.rsplit('.').next().unwrap_or(t).to_string();
            let service = if t.starts_with("AWSGlue.") { "glue" } else { "other" };
            return (service, op);
        }
        let body = String::from_utf8_lossy(&self.body);
        match body.split('&').find_map(|kv| kv.strip_prefix("Action=")) {
            Some(op) => ("cloudwatch", op.to_string()),
            None => ("other", self.line.clone()),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.line);
        for (k, v) in &self.headers {
            if !k.eq_ignore_ascii_case("connection") {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut b = out.into_bytes();
        b.extend_from_slice(&self.body);
        b
    }
}

fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next()?.to_string();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Some(Request { line, headers, body })
}

/// Forward to moto; its whole answer, with `Connection: close` set.
fn forward(req: &Request, upstream: &str) -> Vec<u8> {
    let attempt = || -> std::io::Result<Vec<u8>> {
        let mut up = TcpStream::connect(upstream)?;
        up.set_read_timeout(Some(Duration::from_secs(60)))?;
        up.write_all(&req.bytes())?;
        let mut raw = Vec::new();
        up.read_to_end(&mut raw)?;
        Ok(raw)
    };
    match attempt() {
        Ok(raw) => with_connection_close(&raw),
        Err(e) => respond(502, "text/plain", &[], &format!("proxy: moto unreachable: {e}")),
    }
}

/// Split a raw HTTP/1.1 answer into status, header lines and body (a chunked
/// body is decoded).
fn split_answer(raw: &[u8]) -> Option<(u16, Vec<String>, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n").map(str::to_string);
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<String> = lines.collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        h.starts_with("transfer-encoding:") && h.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(nl + 2..nl + 2 + size)?);
            rest = rest.get(nl + 2 + size + 2..)?;
        }
        body = out;
    }
    Some((status, headers, body))
}

/// The answer with its body rewritten by `fs` if it is a 2xx; the length
/// recomputed, `Connection: close` kept.
fn rewritten(raw: Vec<u8>, fs: &[RewriteFn]) -> Vec<u8> {
    if fs.is_empty() {
        return raw;
    }
    let Some((status, headers, body)) = split_answer(&raw) else { return raw };
    if !(200..300).contains(&status) {
        return raw;
    }
    let mut text = String::from_utf8_lossy(&body).into_owned();
    for f in fs {
        text = f(&text);
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
    let status_line =
        String::from_utf8_lossy(&raw[..end]).split("\r\n").next().unwrap_or("HTTP/1.1 200 OK").to_string();
    let mut out = format!("{status_line}\r\n");
    for h in &headers {
        let l = h.to_ascii_lowercase();
        if !(l.starts_with("content-length:") || l.starts_with("transfer-encoding:") || l.starts_with("connection:")) {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", text.len()));
    let mut b = out.into_bytes();
    b.extend_from_slice(text.as_bytes());
    b
}

fn with_connection_close(raw: &[u8]) -> Vec<u8> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return raw.to_vec() };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut out = String::new();
    for l in head.split("\r\n") {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut b = out.into_bytes();
    b.extend_from_slice(&raw[end + 4..]);
    b
}

fn respond(status: u16, content_type: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// The error a service answers with, in its own protocol.
fn error(service: &str, status: u16, code: &str, message: &str) -> Vec<u8> {
    if service == "cloudwatch" {
        let kind = if status >= 500 { "Receiver" } else { "Sender" };
        let body = format!(
            "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>\
             <RequestId>injected</RequestId></ErrorResponse>"
        );
        respond(status, "text/xml", &[], &body)
    } else {
        let body = format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
        respond(status, "application/x-amz-json-1.1", &[("x-amzn-errortype", code)], &body)
    }
}

fn serve(mut conn: TcpStream, upstream: &str, sh: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Some(req) = read_request(&mut conn) else { return };
    let (service, op) = req.operation();
    let fault = {
        let mut rules = sh.rules.lock().unwrap();
        let hit = rules.iter_mut().find(|r| {
            r.left > 0
                && match &r.op {
                    Some(o) => *o == op,
                    None => true,
                }
        });
        hit.map(|r| {
            r.left -= 1;
            r.fault
        })
    };
    let body = String::from_utf8_lossy(&req.body).into_owned();
    sh.seen.lock().unwrap().push(Seen { at: Instant::now(), service, op: op.clone(), fault, body });
    let answer = match fault {
        Some(Fault::Status(s)) => {
            let code = if service == "cloudwatch" { "InternalFailure" } else { "InternalServiceException" };
            error(service, s, code, &format!("injected HTTP {s}"))
        }
        Some(Fault::Throttle) => {
            let code = if service == "cloudwatch" { "Throttling" } else { "ThrottlingException" };
            error(service, 400, code, "Rate exceeded")
        }
        None | Some(Fault::Slow(_)) => {
            // A poll never reads a window the test is halfway through publishing.
            let held = (op == "GetMetricData").then(|| sh.gate.read().unwrap());
            let fs: Vec<RewriteFn> =
                sh.rewrites.lock().unwrap().iter().filter(|(o, _)| *o == op).map(|(_, f)| f.clone()).collect();
            let answer = rewritten(forward(&req, upstream), &fs);
            drop(held);
            *sh.forwarded.lock().unwrap().entry(op).or_default() += 1;
            if let Some(Fault::Slow(d)) = fault {
                std::thread::sleep(d);
            }
            answer
        }
    };
    // The client may have given up (a slow answer): nothing to do about it.
    let _ = conn.write_all(&answer);
    let _ = conn.shutdown(Shutdown::Write);
}
