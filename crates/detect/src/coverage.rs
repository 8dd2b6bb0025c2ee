//! What a fitted detector sees of each fault kind, measured on labelled
//! windows: the share of each kind's windows it flags (a kind it never flags
//! is a fault it is blind to, e.g. a hung job reads as a quiet one, and no
//! signature can stand for it), its false alarms on healthy windows, and the
//! true faults behind each signature. Kept apart from fitting so that the
//! same figures can be measured for any detector on any labelled windows.

use crate::telemetry::{Coverage, DetectorModel, TelemetryDetector};
use selfheal_core::{Detector, FaultKind, FaultSet, Telemetry};

/// Column of [`FitReport::signatures`] counting windows with no active fault
/// (a pipeline still recovering).
pub const RECOVERING: usize = FaultKind::COUNT;

/// Why the figures could not be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CoverageError {
    /// The minimum flagged share is not a share.
    #[error("the minimum coverage must be in [0, 1], got {0}")]
    MinCoverage(f64),
}

/// `min_coverage` if it is a share (0..=1), else [`CoverageError::MinCoverage`].
pub fn check_min_coverage(min_coverage: f64) -> Result<f64, CoverageError> {
    if (0.0..=1.0).contains(&min_coverage) {
        Ok(min_coverage)
    } else {
        Err(CoverageError::MinCoverage(min_coverage))
    }
}

/// A detector's figures on labelled windows.
#[derive(Clone, Debug, PartialEq)]
pub struct FitReport {
    /// Per fault kind met in the windows (kinds without windows left out),
    /// in [`FaultKind::ALL`] order.
    pub coverage: Vec<Coverage>,
    /// Healthy windows.
    pub healthy: usize,
    /// Healthy windows flagged anomalous.
    pub false_alarms: usize,
    /// Unhealthy windows.
    pub faulty: usize,
    /// Unhealthy windows flagged anomalous.
    pub flagged: usize,
    /// Per signature (row 0 = not flagged, then 1..=k), unhealthy windows per
    /// active fault kind (column [`FaultKind::index`]) and, in column
    /// [`RECOVERING`], those with no active fault.
    pub signatures: Vec<[usize; FaultKind::COUNT + 1]>,
}

impl FitReport {
    /// Measure `model` on `healthy` windows and `faulty` windows with their
    /// active faults.
    pub fn measure(model: &DetectorModel, healthy: &[Telemetry], faulty: &[(Telemetry, FaultSet)]) -> FitReport {
        let det = TelemetryDetector::new(model.clone());
        let mut coverage: Vec<Coverage> =
            FaultKind::ALL.iter().map(|k| Coverage { kind: k.name().to_string(), windows: 0, flagged: 0 }).collect();
        let mut signatures = vec![[0usize; FaultKind::COUNT + 1]; usize::from(det.signatures()) + 1];
        let mut flagged = 0;
        for (t, active) in faulty {
            let d = det.detect(t);
            flagged += usize::from(d.anomalous);
            let row = &mut signatures[usize::from(d.signature)];
            if active.is_empty() {
                row[RECOVERING] += 1;
            }
            for f in active.iter() {
                coverage[f.index()].windows += 1;
                coverage[f.index()].flagged += usize::from(d.anomalous);
                row[f.index()] += 1;
            }
        }
        coverage.retain(|c| c.windows > 0);
        let false_alarms = healthy.iter().filter(|t| det.detect(t).anomalous).count();
        FitReport { coverage, healthy: healthy.len(), false_alarms, faulty: faulty.len(), flagged, signatures }
    }

    /// The fault kinds flagged in less than `min_coverage` (0..=1) of their
    /// windows: those the detector is (nearly) blind to.
    pub fn blind(&self, min_coverage: f64) -> Result<Vec<&Coverage>, CoverageError> {
        let min_coverage = check_min_coverage(min_coverage)?;
        Ok(self.coverage.iter().filter(|c| c.share() < min_coverage).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimum_coverage_outside_zero_to_one_is_an_error() {
        let r = FitReport { coverage: vec![], healthy: 0, false_alarms: 0, faulty: 0, flagged: 0, signatures: vec![] };
        assert_eq!(r.blind(1.5).unwrap_err(), CoverageError::MinCoverage(1.5));
        assert_eq!(r.blind(-0.1).unwrap_err(), CoverageError::MinCoverage(-0.1));
        assert!(r.blind(0.5).unwrap().is_empty());
    }

    #[test]
    fn blind_kinds_are_those_under_the_share() {
        let c = |kind: &str, windows, flagged| Coverage { kind: kind.into(), windows, flagged };
        let r = FitReport {
            coverage: vec![c("stuck_job", 100, 2), c("schema_drift", 100, 90)],
            healthy: 0,
            false_alarms: 0,
            faulty: 200,
            flagged: 92,
            signatures: vec![],
        };
        let blind: Vec<&str> = r.blind(0.05).unwrap().iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(blind, ["stuck_job"]);
    }
}
