//! The sidecar controller: a tokio daemon that runs next to data pipelines.
//!
//! One sample's path, folder by folder: a [`source`] yields telemetry windows
//! per pipeline; [`decide`] scores each window with the detector, encodes the
//! state, asks the Q table, and puts the choice through the guardrails of
//! `selfheal-guard`; [`actuate`] applies an allowed action through an
//! [`actuate::Actuator`] with a breaker, a bulkhead, a learned timeout and
//! jittered retries; the next windows come back to [`decide`] as a reward and
//! a Q update; every step lands in the [`provenance`] log. [`daemon`] is the
//! async shell around that sync core, [`http`] its endpoints, [`config`] the
//! file that sets it all, and [`build`] puts the daemon together from it.

pub mod actuate;
pub mod auth;
pub mod build;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pager;
pub mod provenance;
pub mod source;
pub mod ui;
pub mod window;

/// A boxed future, the return type of the async seams ([`source::TelemetrySource`],
/// [`actuate::Actuator`]), so they can be used as trait objects.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Wall-clock time in Unix milliseconds: the daemon's one clock read, passed
/// down to the sync guards.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Locks a std mutex without panicking when an earlier holder panicked.
///
/// Why recover rather than poison-panic: every value the sidecar guards this
/// way (the provenance log, breakers, timeouts, the assembler, RNGs, UI
/// sessions) is left consistent between statements by its own methods, and a
/// panic in one task (caught by tokio) must not take every later lock user,
/// and so the whole daemon and its bounded shutdown, down with it.
pub trait LockExt<T> {
    /// The guard, recovered from a poisoned lock if need be.
    fn locked(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> LockExt<T> for std::sync::Mutex<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
