//! Fail-over on the wall clock against the DynamoDB lease table (moto): an
//! active replica dies mid-stream; the standby takes over within the lease
//! time; no decision is executed twice; a paused replica that wakes up after
//! the takeover neither acts by itself (`may_act`) nor gets an action past the
//! actuator's fence.

// A test fails loudly on a broken setup (moto, sockets): `expect` is the point here.
#![allow(clippy::expect_used)]

mod common;
mod support;

use selfheal_fleet::{DynamoLeases, Fence, FencingToken, Lease, LeaseStore};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_millis(1_500);
const MARGIN: Duration = Duration::from_millis(400);
/// A decision window.
const WINDOW_MS: i64 = 50;
/// How often a replica renews (holder) or tries to take (standby).
const TICK: Duration = Duration::from_millis(100);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The actuator: fenced, and a ledger of executed decisions.
#[derive(Default)]
struct Actuator {
    fence: Fence,
    /// decision id -> (replica, epoch, time ms) of each execution.
    done: BTreeMap<String, Vec<(String, u64, i64)>>,
    refused: Vec<String>,
}

impl Actuator {
    fn execute(&mut self, replica: &str, token: &FencingToken, decision: &str) -> bool {
        let key = token.idempotency_key(decision);
        let (id, epoch) = FencingToken::parse_idempotency_key(&key).expect("our own format");
        if self.fence.admit(token).is_err() {
            self.refused.push(key);
            return false;
        }
        self.done.entry(id.to_string()).or_default().push((replica.to_string(), epoch, now_ms()));
        true
    }
}

/// A replica's loop: hold or take the lease of `p1`, act on every new window
/// while `may_act`. Returns on abort (kill) only.
async fn replica(
    id: &'static str,
    leases: Arc<DynamoLeases>,
    act: Arc<Mutex<Actuator>>,
    held: Arc<Mutex<Option<Lease>>>,
) {
    let mut last_window = -1;
    loop {
        let now = now_ms();
        let current = held.lock().unwrap().clone();
        let next = match current {
            Some(l) => leases.renew(&l, now, TTL).await.unwrap(),
            None => leases.try_acquire("p1", id, now, TTL).await.unwrap(),
        };
        *held.lock().unwrap() = next.clone();
        if let Some(l) = next {
            // Act on the windows that closed since the last tick, the lease permitting.
            let window = now_ms() / WINDOW_MS;
            while last_window < window && l.may_act(now_ms(), MARGIN) {
                last_window = if last_window < 0 { window } else { last_window + 1 };
                act.lock().unwrap().execute(id, &l.token(), &format!("p1-{last_window}"));
            }
        } else {
            // A standby follows the windows without acting.
            last_window = now_ms() / WINDOW_MS;
        }
        tokio::time::sleep(TICK).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_within_the_lease_and_nothing_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let leases = Arc::new(DynamoLeases::new(support::dynamodb(&moto.url), "leases"));
    leases.create_table().await.unwrap();
    let act = Arc::new(Mutex::new(Actuator::default()));

    let a_lease = Arc::new(Mutex::new(None));
    let a = tokio::spawn(replica("a", leases.clone(), act.clone(), a_lease.clone()));
    // a holds the lease before b starts.
    let start = Instant::now();
    while a_lease.lock().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "a never took the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_lease = Arc::new(Mutex::new(None));
    let b = tokio::spawn(replica("b", leases.clone(), act.clone(), b_lease.clone()));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(b_lease.lock().unwrap().is_none(), "b must not take a live lease");

    // Kill a mid-stream: no more renewals, no more actions.
    a.abort();
    let _ = a.await;
    let a_last = a_lease.lock().unwrap().clone().expect("a held the lease when killed");
    let killed_at = now_ms();
    let start = Instant::now();
    while b_lease.lock().unwrap().is_none() {
        assert!(start.elapsed() < TTL + Duration::from_secs(5), "b did not take over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b_got = b_lease.lock().unwrap().clone().unwrap();
    let takeover_ms = b_got.expires_at_ms() - TTL.as_millis() as i64 - killed_at;
    eprintln!("takeover {takeover_ms} ms after the kill (lease {} ms, tick {} ms)", TTL.as_millis(), TICK.as_millis());
    assert!(
        takeover_ms <= (TTL + TICK + Duration::from_millis(300)).as_millis() as i64,
        "takeover took {takeover_ms} ms"
    );
    assert_eq!(b_got.epoch(), a_last.epoch() + 1);
    tokio::time::sleep(Duration::from_millis(800)).await;

    // a wakes up from a "pause" with its old lease: the rule stops it, and
    // if it acted anyway (paused between the check and the call), the fence does.
    assert!(!a_last.may_act(now_ms(), MARGIN));
    assert!(!act.lock().unwrap().execute("a", &a_last.token(), "p1-zombie"));
    b.abort();
    let _ = b.await;

    let act = act.lock().unwrap();
    assert_eq!(act.refused, vec![a_last.token().idempotency_key("p1-zombie")]);
    let twice: Vec<_> = act.done.iter().filter(|(_, runs)| runs.len() > 1).collect();
    assert!(twice.is_empty(), "decisions executed twice: {twice:?}");
    let by = |r: &str| act.done.values().flatten().filter(|(who, ..)| who == r).map(|(_, _, t)| *t).collect::<Vec<_>>();
    let (a_times, b_times) = (by("a"), by("b"));
    assert!(!a_times.is_empty() && !b_times.is_empty(), "both acted: a {}, b {}", a_times.len(), b_times.len());
    let (a_end, b_start) = (*a_times.iter().max().unwrap(), *b_times.iter().min().unwrap());
    assert!(a_end < b_start, "a acted at {a_end}, after b started at {b_start}");
    // Every action ran under a live lease with the margin to spare.
    assert!(a_end + (MARGIN.as_millis() as i64) < a_last.expires_at_ms());
    // The pipeline was unwatched at most a lease time (plus one tick and slack).
    let gap = b_start - a_end;
    eprintln!("unwatched for {gap} ms");
    assert!(gap <= (TTL + TICK + Duration::from_millis(400)).as_millis() as i64, "gap {gap} ms");
}
