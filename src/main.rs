//! `selfheal`: train a recovery policy in the simulator, evaluate it side by side
//! with the baselines, and inspect episodes.

#![forbid(unsafe_code)]

mod commands;
mod defaults;
mod wiring;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// A self-healing control agent for data pipelines.
///
/// Telemetry → anomaly → state → Q-learning agent → guarded action → reward.
/// Start with `selfheal evaluate`: it runs the shipped policy against no-op,
/// random, rule-based and oracle policies on the shipped scenario.
#[derive(Parser)]
#[command(name = "selfheal", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Train(commands::train::Args),
    Evaluate(commands::evaluate::Args),
    Simulate(commands::simulate::Args),
    Calibrate(commands::calibrate::Args),
    FitDetector(commands::fit_detector::Args),
    Detect(commands::detect::Args),
    Nab(commands::nab::Args),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SELFHEAL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Train(a) => commands::train::run(a),
        Command::Evaluate(a) => commands::evaluate::run(a),
        Command::Simulate(a) => commands::simulate::run(a),
        Command::Calibrate(a) => commands::calibrate::run(a),
        Command::FitDetector(a) => commands::fit_detector::run(a),
        Command::Detect(a) => commands::detect::run(a),
        Command::Nab(a) => commands::nab::run(a),
    }
}
