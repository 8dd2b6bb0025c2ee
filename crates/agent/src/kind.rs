//! The encoders this build knows, by the id model files store: one factory,
//! so the CLI, the sidecar and the report build encoders the same way.

use crate::{DetectorEncoder, EncoderConfig, TelemetryEncoder};
use selfheal_core::{Detector, StateEncoder};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A state encoder known to this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderKind {
    /// `telemetry-v1`: hand-written symptoms (the foundation's encoder).
    TelemetryV1,
    /// `detector-v1`: failure signatures and buckets.
    DetectorV1,
    /// `detector-v2`: `detector-v1` with the incident's age (the shipped policy).
    DetectorV2,
}

impl EncoderKind {
    /// Every kind, oldest first.
    pub const ALL: [EncoderKind; 3] = [EncoderKind::TelemetryV1, EncoderKind::DetectorV1, EncoderKind::DetectorV2];

    /// The id stored in model files.
    pub fn id(self) -> &'static str {
        match self {
            EncoderKind::TelemetryV1 => "telemetry-v1",
            EncoderKind::DetectorV1 => "detector-v1",
            EncoderKind::DetectorV2 => "detector-v2",
        }
    }

    /// The kind with this id, if this build knows it (see the [`FromStr`]
    /// impl for an error that lists the known ids).
    pub fn parse(id: &str) -> Option<EncoderKind> {
        id.parse().ok()
    }

    /// The ids this build knows, for messages.
    pub fn known() -> String {
        EncoderKind::ALL.map(EncoderKind::id).join(", ")
    }

    /// Whether its states are numbered by a detector's signatures.
    pub fn uses_detector(self) -> bool {
        self != EncoderKind::TelemetryV1
    }

    /// A fresh encoder of this kind; `detector` is ignored by `telemetry-v1`.
    pub fn build(
        self,
        config: EncoderConfig,
        detector: Arc<dyn Detector + Send + Sync>,
    ) -> Box<dyn StateEncoder + Send + Sync> {
        match self.detector_encoder(config.clone(), detector) {
            Some(e) => Box::new(e),
            None => Box::new(TelemetryEncoder::new(config)),
        }
    }

    /// The encoder of a detector kind as its concrete type (whose states can
    /// be taken apart into signature, bucket and age); `None` for `telemetry-v1`.
    pub fn detector_encoder(
        self,
        config: EncoderConfig,
        detector: Arc<dyn Detector + Send + Sync>,
    ) -> Option<DetectorEncoder> {
        match self {
            EncoderKind::TelemetryV1 => None,
            EncoderKind::DetectorV1 => Some(DetectorEncoder::new(config, detector)),
            EncoderKind::DetectorV2 => Some(DetectorEncoder::with_age(config, detector)),
        }
    }
}

impl fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for EncoderKind {
    type Err = UnknownEncoder;

    fn from_str(id: &str) -> Result<EncoderKind, UnknownEncoder> {
        EncoderKind::ALL.into_iter().find(|k| k.id() == id).ok_or_else(|| UnknownEncoder(id.to_string()))
    }
}

/// An encoder id this build does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown encoder {0:?}; this build knows {known}", known = EncoderKind::known())]
pub struct UnknownEncoder(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_built_encoders_report_their_id() {
        struct None0;
        impl Detector for None0 {
            fn id(&self) -> &str {
                "none"
            }
            fn signatures(&self) -> u16 {
                2
            }
            fn detect(&self, _t: &selfheal_core::Telemetry) -> selfheal_core::Detection {
                selfheal_core::Detection::default()
            }
        }
        let cfg =
            EncoderConfig { worker_levels: vec![5, 10, 20, 40], base_level: 1, detector: None, driver_workers: 0 };
        for k in EncoderKind::ALL {
            assert_eq!(EncoderKind::parse(k.id()), Some(k));
            assert_eq!(k.build(cfg.clone(), Arc::new(None0)).id(), k.id());
        }
        assert_eq!(EncoderKind::parse("detector-v9"), None);
        let err = "detector-v9".parse::<EncoderKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown encoder \"detector-v9\"; this build knows telemetry-v1, detector-v1, detector-v2"
        );
    }
}
