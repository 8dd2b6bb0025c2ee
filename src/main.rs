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
    /// Format of the diagnostic log on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    Train(commands::train::Args),
    Evaluate(commands::evaluate::Args),
    Simulate(commands::simulate::Args),
    Calibrate(commands::calibrate::Args),
    FitDetector(commands::fit_detector::Args),
    Fit(commands::fit::Args),
    Detect(commands::detect::Args),
    Nab(commands::nab::Args),
    Run(commands::run::Args),
    Config(commands::run::ConfigArgs),
    Validate(commands::run::ValidateArgs),
    /// Approve a proposal waiting on a running daemon (recommend mode).
    Approve(commands::run::ClientArgs),
    /// Reject a proposal waiting on a running daemon; it never runs.
    Reject(commands::run::ClientArgs),
    /// Kill switch: pause all acting on a running daemon at once.
    Pause(commands::run::ClientArgs),
    /// Resume acting after a pause (refused while the pause file exists).
    Resume(commands::run::ClientArgs),
    Rollback(commands::run::RollbackArgs),
    Explain(commands::provlog::ExplainArgs),
    Log(commands::provlog::LogArgs),
    Report(commands::report::Args),
    Playbook(commands::playbook::Args),
    Shadow(commands::shadow::Args),
    Ope(commands::ope::Args),
    Diff(commands::diff::Args),
    /// Fleet: fold shard models; merge, roll out and roll back the shared policy in S3.
    Fleet(commands::fleet::Args),
    /// Write a simulated provenance log (development: off-policy evaluation checks, benchmarks).
    #[command(hide = true)]
    Simlog(commands::ope::SimLogArgs),
}

/// Log output format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event, structured fields included.
    Json,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The daemon's decisions are its output, so `run` logs at info by default.
    let default = if matches!(cli.command, Command::Run(_)) { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SELFHEAL_LOG").unwrap_or_else(|_| default.into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    match cli.command {
        Command::Train(a) => commands::train::run(a),
        Command::Evaluate(a) => commands::evaluate::run(a),
        Command::Simulate(a) => commands::simulate::run(a),
        Command::Calibrate(a) => commands::calibrate::run(a),
        Command::FitDetector(a) => commands::fit_detector::run(a),
        Command::Fit(a) => commands::fit::run(a),
        Command::Detect(a) => commands::detect::run(a),
        Command::Nab(a) => commands::nab::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Config(a) => commands::run::config(a),
        Command::Validate(a) => commands::run::validate(a),
        Command::Approve(a) => commands::run::client(commands::run::Ask::Approve, a),
        Command::Reject(a) => commands::run::client(commands::run::Ask::Reject, a),
        Command::Pause(a) => commands::run::client(commands::run::Ask::Pause, a),
        Command::Resume(a) => commands::run::client(commands::run::Ask::Resume, a),
        Command::Rollback(a) => commands::run::rollback(a),
        Command::Explain(a) => commands::provlog::run_explain(a),
        Command::Log(a) => commands::provlog::run_log(a),
        Command::Report(a) => commands::report::run(a),
        Command::Playbook(a) => commands::playbook::run(a),
        Command::Shadow(a) => commands::shadow::run(a),
        Command::Ope(a) => commands::ope::run(a),
        Command::Diff(a) => commands::diff::run(a),
        Command::Fleet(a) => commands::fleet::run(a),
        Command::Simlog(a) => commands::ope::run_simlog(a),
    }
}
