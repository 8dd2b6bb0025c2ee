//! Webhook receivers of the end-to-end tests: real HTTP/1.1 servers on
//! 127.0.0.1, one thread per connection, one request per connection (std
//! only). [`Receiver`] answers 200 and keeps every request whole;
//! [`Hook`] answers what the test says (status, `Retry-After`) and keeps
//! each request's time, `Idempotency-Key`, body and answer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Listen on a free loopback port; every connection goes to `serve` on a
/// thread of its own. Returns `http://127.0.0.1:PORT{path}`.
fn listen(path: &str, serve: impl Fn(TcpStream) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let serve = serve.clone();
            std::thread::spawn(move || serve(stream));
        }
    });
    url
}

/// A received request: method, path, headers (names lower-cased, values as
/// sent), body.
pub type Request = (String, String, Vec<(String, String)>, String);
/// Every request received so far.
pub type Got = Mutex<Vec<Request>>;

/// Read one request (head and `Content-Length` body); `None` if the client
/// closed or stalled 10 s before it was whole.
pub fn read_request(s: &mut TcpStream) -> Option<Request> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf: Vec<u8> = Vec::new();
    let mut fill = |buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !fill(&mut buf) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + len {
        if !fill(&mut buf) {
            return None;
        }
    }
    let body = String::from_utf8_lossy(&buf[body_start..body_start + len]).into_owned();
    Some((method, path, headers, body))
}

/// Answer `status` (with `Retry-After` if given) and close.
fn answer(s: &mut TcpStream, status: u16, retry_after: Option<&str>) {
    let extra = retry_after.map(|r| format!("Retry-After: {r}\r\n")).unwrap_or_default();
    let reply = format!("HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(reply.as_bytes());
}

/// A tiny webhook receiver: answers 200 to every request and keeps
/// (method, path, headers, body) of each.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Got>,
}

impl Receiver {
    pub fn start(path: &str) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        let url = listen(path, move |mut s| {
            if let Some(req) = read_request(&mut s) {
                keep.lock().unwrap().push(req);
                answer(&mut s, 200, None);
            }
        });
        Receiver { url, got }
    }
}

/// One request a [`Hook`] got: when, its `Idempotency-Key` (as sent; empty
/// if none), its body, what it was answered.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub key: String,
    pub body: String,
    pub status: u16,
}

impl Hit {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The answer to the n-th request (0-based): (status, `Retry-After`).
pub type Responder = dyn Fn(usize) -> (u16, Option<String>) + Send + Sync;

/// A webhook receiver at `/hook` whose answer to the n-th request is
/// `respond(n)`.
pub struct Hook {
    pub url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Hook {
    pub fn start(respond: Arc<Responder>) -> Hook {
        let hits = Arc::new(Mutex::new(Vec::<Hit>::new()));
        let keep = hits.clone();
        let url = listen("/hook", move |mut s| {
            let Some((_, _, headers, body)) = read_request(&mut s) else { return };
            let key = headers.into_iter().find(|(k, _)| k == "idempotency-key").map(|(_, v)| v).unwrap_or_default();
            // Decide and record under one lock, so the n-th request gets the n-th answer.
            let (status, retry_after) = {
                let mut hits = keep.lock().unwrap();
                let (status, retry_after) = respond(hits.len());
                hits.push(Hit { at: Instant::now(), key, body, status });
                (status, retry_after)
            };
            answer(&mut s, status, retry_after.as_deref());
        });
        Hook { url, hits }
    }

    /// A hook that answers 200 to everything.
    pub fn ok() -> Hook {
        Hook::start(Arc::new(|_| (200, None)))
    }

    /// Every request so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Requests for `key` answered 2xx.
    pub fn accepted(&self, key: &str) -> usize {
        self.hits().iter().filter(|h| h.key == key && (200..300).contains(&h.status)).count()
    }
}
