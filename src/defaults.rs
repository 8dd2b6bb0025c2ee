//! The embedded defaults: the shipped scenario, policy and rule thresholds, so
//! `selfheal evaluate` works from any directory with no arguments.

use anyhow::{Context, Result};
use selfheal_agent::store::{GlueBuiltinsFile, ModelFile, RulesFile};
use selfheal_detect::telemetry::DetectorModel;
use selfheal_sim::Scenario;
use std::path::Path;

/// The shipped policy (`models/policy.json`).
pub const POLICY_JSON: &str = include_str!("../models/policy.json");
/// The shipped rule thresholds (`models/rules.json`).
pub const RULES_JSON: &str = include_str!("../models/rules.json");

/// The shipped Glue built-ins settings (`models/glue-builtins.json`).
pub const GLUE_BUILTINS_JSON: &str = include_str!("../models/glue-builtins.json");

/// The shipped detector (`models/detector.json`).
pub const DETECTOR_JSON: &str = include_str!("../models/detector.json");

/// The detector at `path`, or the shipped one.
pub fn detector(path: Option<&Path>) -> Result<DetectorModel> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(DetectorModel::from_json(&text, &p.display().to_string())?)
        }
        None => {
            DetectorModel::from_json(DETECTOR_JSON, "<shipped models/detector.json>").context("the shipped detector")
        }
    }
}

/// The scenario at `path`, or the shipped default.
pub fn scenario(path: Option<&Path>) -> Result<Scenario> {
    match path {
        Some(p) => Ok(Scenario::load(p)?),
        None => Ok(Scenario::builtin_default()),
    }
}

/// The policy at `path`, or the shipped one.
pub fn policy(path: Option<&Path>) -> Result<ModelFile> {
    match path {
        Some(p) => Ok(ModelFile::load(p)?),
        None => ModelFile::from_json(POLICY_JSON, "<shipped models/policy.json>").context("the shipped policy"),
    }
}

/// The rule thresholds at `path`, or the shipped ones.
pub fn rules(path: Option<&Path>) -> Result<RulesFile> {
    match path {
        Some(p) => Ok(RulesFile::load(p)?),
        None => RulesFile::from_json(RULES_JSON, "<shipped models/rules.json>").context("the shipped rules"),
    }
}

/// The Glue built-ins settings at `path`, or the shipped ones.
pub fn glue_builtins(path: Option<&Path>) -> Result<GlueBuiltinsFile> {
    match path {
        Some(p) => Ok(GlueBuiltinsFile::load(p)?),
        None => GlueBuiltinsFile::from_json(GLUE_BUILTINS_JSON, "<shipped models/glue-builtins.json>")
            .context("the shipped Glue built-ins settings"),
    }
}

/// Parse `A..B` into a seed range.
pub fn parse_seeds(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let a: u64 = a.trim().parse().map_err(|_| format!("bad start seed {a:?}"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("bad end seed {b:?}"))?;
    if b <= a {
        return Err(format!("empty seed range {a}..{b}"));
    }
    Ok(a..b)
}
