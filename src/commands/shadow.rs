//! `selfheal shadow`: where the rules' shadow choice differed from the decision.

use anyhow::Result;
use std::path::PathBuf;

/// Compare the decisions in a provenance log with the rule policy's choice
/// logged beside each (`shadow`): where they differed, and how each of those
/// decisions turned out (outcome and reward records).
#[derive(clap::Args)]
pub struct Args {
    /// Provenance log; its rotated segments (provenance.000001.jsonl, ...) are read too.
    #[arg(long, default_value = "selfheal-state/provenance.jsonl")]
    log: PathBuf,
    /// Differing decisions to list one by one.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let log = crate::commands::provlog::read_review_log(&a.log)?;
    for (line, why) in log.skipped.iter().take(5) {
        eprintln!("warning: {}:{line}: skipped: {why}", a.log.display());
    }
    let r = selfheal_report::shadow::compare(&log);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", selfheal_report::shadow::text(&r, &log, a.limit));
    }
    Ok(())
}
