//! A bulkhead per downstream endpoint: a cap on calls in flight at once.
//!
//! A slow endpoint should not soak up every task of the sidecar: with a cap per
//! endpoint, calls to a struggling one queue up against their own limit while calls
//! to healthy endpoints go on. The permit is a guard released on drop, owning its
//! share of the count, so it can be held across an `.await` and never leaks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Caps concurrent calls to one endpoint. Clones share the same count.
#[derive(Clone, Debug)]
pub struct Bulkhead {
    max_concurrent: u32,
    in_use: Arc<AtomicU32>,
}

/// Leave to make one call; gives its place back when dropped.
#[must_use = "the place is given back as soon as the permit is dropped"]
#[derive(Debug)]
pub struct BulkheadPermit {
    in_use: Arc<AtomicU32>,
}

impl Bulkhead {
    /// A bulkhead letting at most `max_concurrent` calls in at once (0 lets none in).
    pub fn new(max_concurrent: u32) -> Bulkhead {
        Bulkhead { max_concurrent, in_use: Arc::new(AtomicU32::new(0)) }
    }

    /// A permit if a place is free, else None (it does not wait).
    pub fn try_enter(&self) -> Option<BulkheadPermit> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_concurrent).then_some(n + 1))
            .ok()
            .map(|_| BulkheadPermit { in_use: Arc::clone(&self.in_use) })
    }

    /// Permits currently held.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn max_concurrent(&self) -> u32 {
        self.max_concurrent
    }
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn caps_and_releases_on_drop() {
        let b = Bulkhead::new(2);
        let p1 = b.try_enter().unwrap();
        let p2 = b.try_enter().unwrap();
        assert_eq!(b.in_use(), 2);
        assert!(b.try_enter().is_none());
        drop(p1);
        assert_eq!(b.in_use(), 1);
        let p3 = b.clone().try_enter().expect("a clone shares the count");
        assert!(b.try_enter().is_none());
        drop((p2, p3));
        assert_eq!(b.in_use(), 0);
        assert!(Bulkhead::new(0).try_enter().is_none());
    }

    #[test]
    fn permit_is_send_and_static() {
        fn assert_send_static<T: Send + 'static>(_: &T) {}
        let b = Bulkhead::new(1);
        let p = b.try_enter().unwrap();
        assert_send_static(&p);
        std::thread::spawn(move || drop(p)).join().unwrap();
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn threads_never_exceed_the_cap() {
        const CAP: u32 = 3;
        let b = Bulkhead::new(CAP);
        let inside = AtomicU32::new(0);
        let peak = AtomicU32::new(0);
        let over = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if let Some(_permit) = b.try_enter() {
                            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(n, Ordering::SeqCst);
                            if n > CAP || b.in_use() > CAP {
                                over.store(true, Ordering::SeqCst);
                            }
                            std::hint::spin_loop();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert!(!over.load(Ordering::SeqCst), "more than {CAP} inside at once");
        assert!(peak.load(Ordering::SeqCst) <= CAP);
        assert!(peak.load(Ordering::SeqCst) >= 1);
        assert_eq!(b.in_use(), 0);
    }
}
