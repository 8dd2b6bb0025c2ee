//! `selfheal diff`: the states whose action changed between two policies.

use crate::defaults;
use anyhow::Result;
use selfheal_report::policy::PolicyView;
use std::path::{Path, PathBuf};

/// Compare two policies: every state either visited in training whose greedy
/// action changed, with the evidence on each side (visits, Q lead, confidence).
#[derive(clap::Args)]
pub struct Args {
    /// The old policy (`shipped` for the shipped one).
    old: PathBuf,
    /// The new policy (`shipped` for the shipped one).
    new: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn view(p: &Path) -> Result<PolicyView> {
    let path = (p.as_os_str() != "shipped").then_some(p);
    Ok(PolicyView::new(defaults::policy(path)?)?)
}

pub fn run(a: Args) -> Result<()> {
    let (old, new) = (view(&a.old)?, view(&a.new)?);
    let (compared, changes) = selfheal_report::diff::diff(&old, &new)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "compared": compared, "changed": changes }))?);
    } else {
        print!("{}", selfheal_report::diff::text(compared, &changes));
    }
    Ok(())
}
