//! The kill switch: one place that stops every action at once.
//!
//! When the agent misbehaves, or people are working on the pipeline by hand, the
//! on-call must be able to stop it without redeploying. This struct holds the pause
//! set through the sidecar's endpoint, with who-said-why and since when; a pause
//! file, when present, pauses too (the sidecar checks the file itself). While
//! paused the sidecar still observes and logs, but neither acts nor proposes.

use serde::{Deserialize, Serialize};

/// A pause in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Why, as given by whoever paused (shown in logs and the status endpoint).
    pub reason: String,
    /// When the pause began (Unix ms).
    pub since_ms: u64,
}

/// The pause state set through the endpoint. Stays paused until [`KillSwitch::resume`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KillSwitch {
    pause: Option<Pause>,
}

impl KillSwitch {
    /// A switch that is not paused.
    pub fn new() -> KillSwitch {
        KillSwitch::default()
    }

    /// Pause from `now_ms`. Returns false, keeping the first pause and its reason,
    /// if already paused.
    pub fn pause(&mut self, reason: String, now_ms: u64) -> bool {
        if self.pause.is_some() {
            return false;
        }
        self.pause = Some(Pause { reason, since_ms: now_ms });
        true
    }

    /// Lift the pause; returns the pause that ended, or None if it was not paused.
    pub fn resume(&mut self) -> Option<Pause> {
        self.pause.take()
    }

    /// The pause in force, if any.
    pub fn paused(&self) -> Option<&Pause> {
        self.pause.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_then_resume() {
        let mut k = KillSwitch::new();
        assert!(k.paused().is_none());
        assert!(k.pause("manual backfill".into(), 1_000));
        assert_eq!(k.paused(), Some(&Pause { reason: "manual backfill".into(), since_ms: 1_000 }));
        let ended = k.resume().unwrap();
        assert_eq!(ended.since_ms, 1_000);
        assert!(k.paused().is_none());
        assert!(k.resume().is_none());
    }

    #[test]
    fn second_pause_keeps_the_first() {
        let mut k = KillSwitch::new();
        assert!(k.pause("first".into(), 1));
        assert!(!k.pause("second".into(), 2));
        assert_eq!(k.paused().unwrap().reason, "first");
        assert_eq!(k.paused().unwrap().since_ms, 1);
    }
}
