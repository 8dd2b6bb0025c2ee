//! A proxy that hands moto one request at a time.
//!
//! Why: moto checks a condition and writes in two steps without a lock
//! (`UpdateItem` with a `ConditionExpression`, `PutObject` with
//! `If-Match`/`If-None-Match`), so under concurrent requests two conditional
//! writes can both pass, which DynamoDB and S3 never allow (a racing test saw
//! two winners of one `attribute_not_exists` take). Serialising the requests
//! gives the stores under test a linearizable service, as the real ones are;
//! the clients still race each other for it.
//!
//! Each client connection carries one request (`Connection: close` both
//! ways); the request is read whole (Content-Length bodies: the test
//! clients send no chunked bodies), forwarded under a global lock, and the
//! answer read to EOF before the lock is released.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy; `url` is where clients connect. Its threads end with the process.
pub struct Serial {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Serial {
    /// Proxy to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Serial {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the serialising proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.to_string();
        let lock = Arc::new(Mutex::new(()));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (upstream, lock) = (upstream.clone(), lock.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, &lock);
                });
            }
        });
        Serial { url }
    }
}

fn serve(mut client: TcpStream, upstream: &str, lock: &Mutex<()>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (head, body) = read_request(&mut client)?;
    // Force Connection: close upstream.
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let answer = {
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut up = TcpStream::connect(upstream)?;
        up.set_read_timeout(Some(Duration::from_secs(30)))?;
        up.write_all(out.as_bytes())?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        answer
    };
    client.write_all(&answer)?;
    client.flush()?;
    client.shutdown(std::net::Shutdown::Both)
}

/// The request head (without the blank line) and its Content-Length body.
fn read_request(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed before the request head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("transfer-encoding: chunked"),
        "the serialising proxy reads Content-Length bodies only:\n{head}"
    );
    let len: usize = lower
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}
