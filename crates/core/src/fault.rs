//! Fault kinds: what the simulator injects and what an incident is about (DESIGN §2).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A kind of pipeline fault. The simulator injects these; the agent never sees
/// them directly, only their telemetry signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The upstream API answers 5xx; the ingest run fails until it is retried.
    Upstream5xx,
    /// Network latency and timeouts between stages.
    NetworkTimeout,
    /// The source schema drifted; the transform rejects records.
    SchemaDrift,
    /// Another job competes for the cluster; CPU saturates, throughput falls.
    ResourceContention,
    /// Executors run out of heap; tasks fail with out-of-memory errors.
    MemoryPressure,
    /// The job hangs: elapsed time grows, nothing is read.
    StuckJob,
    /// Malformed records make the job fail on every attempt.
    PoisonRecords,
    /// The sink is down; writes fail. Needs backpressure and patience.
    DownstreamOutage,
    /// The "novel" kind: a hot partition skews one executor. No rule of the
    /// rule-based baseline covers it; a restart repartitions the data.
    Novel,
}

impl FaultKind {
    /// Number of fault kinds.
    pub const COUNT: usize = 9;
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; FaultKind::COUNT] = [
        FaultKind::Upstream5xx,
        FaultKind::NetworkTimeout,
        FaultKind::SchemaDrift,
        FaultKind::ResourceContention,
        FaultKind::MemoryPressure,
        FaultKind::StuckJob,
        FaultKind::PoisonRecords,
        FaultKind::DownstreamOutage,
        FaultKind::Novel,
    ];

    /// Dense index of the kind.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stable snake_case name used in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Upstream5xx => "upstream_5xx",
            FaultKind::NetworkTimeout => "network_timeout",
            FaultKind::SchemaDrift => "schema_drift",
            FaultKind::ResourceContention => "resource_contention",
            FaultKind::MemoryPressure => "memory_pressure",
            FaultKind::StuckJob => "stuck_job",
            FaultKind::PoisonRecords => "poison_records",
            FaultKind::DownstreamOutage => "downstream_outage",
            FaultKind::Novel => "novel",
        }
    }

    /// The kind with this name.
    pub fn from_name(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of fault kinds (a bit per kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FaultSet(u16);

impl FaultSet {
    /// No faults.
    pub const EMPTY: FaultSet = FaultSet(0);

    /// Whether `k` is in the set.
    pub fn contains(self, k: FaultKind) -> bool {
        self.0 & (1 << k.index()) != 0
    }

    /// Add `k`.
    pub fn insert(&mut self, k: FaultKind) {
        self.0 |= 1 << k.index();
    }

    /// Remove `k`.
    pub fn remove(&mut self, k: FaultKind) {
        self.0 &= !(1 << k.index());
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of kinds in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The kinds in the set, in [`FaultKind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = FaultKind> {
        FaultKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl FromIterator<FaultKind> for FaultSet {
    fn from_iter<I: IntoIterator<Item = FaultKind>>(iter: I) -> Self {
        let mut s = FaultSet::EMPTY;
        for k in iter {
            s.insert(k);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::from_name(k.name()), Some(k));
        }
        assert_eq!(FaultKind::from_name("gremlins"), None);
    }

    #[test]
    fn set_operations() {
        let mut s: FaultSet = [FaultKind::Novel, FaultKind::StuckJob].into_iter().collect();
        assert_eq!(s.len(), 2);
        s.remove(FaultKind::Novel);
        assert!(s.contains(FaultKind::StuckJob) && !s.contains(FaultKind::Novel));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![FaultKind::StuckJob]);
    }
}
