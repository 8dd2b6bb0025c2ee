//! `selfheal playbook`: one Markdown playbook per failure signature.

use super::report::{load, simulate, SimArgs};
use anyhow::Result;
use selfheal_report::playbook::playbook;
use std::path::PathBuf;

/// Write one Markdown playbook per failure signature of the detector: the
/// symptoms as telemetry ranges (from simulated windows the detector assigns
/// to the signature), what the policy does first and next, the evidence
/// (visits, Q lead), what to do by hand if the action fails, and when it
/// escalates.
#[derive(clap::Args)]
pub struct Args {
    /// Policy model file; defaults to the shipped models/policy.json.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "playbooks")]
    out: PathBuf,
    #[command(flatten)]
    sim: SimArgs,
}

pub fn run(a: Args) -> Result<()> {
    let l = load(a.policy.as_deref(), &a.sim)?;
    anyhow::ensure!(l.view.signatures() > 0, "playbooks need a detector-v1 policy (one per failure signature)");
    let sim = simulate(&l.scenario, l.seeds.clone(), &l.model, &l.rules, l.glue, &l.detector, &l.view)?;
    let lines = l.view.lines(&sim.seen);
    let mut index = String::from("# Playbooks\n\nOne per failure signature of the detector.\n\n| signature | first action | next action | file |\n|---:|---|---|---|\n");
    for k in 1..=l.view.signatures() {
        let text = playbook(&l.view, &lines, k, sim.signatures.get(&k), sim.signatures.get(&0));
        let name = format!("signature-{k:02}.md");
        selfheal_report::write_text(&a.out.join(&name), &text)?;
        let (first, next) = selfheal_report::playbook::first_and_next(&lines, k);
        index.push_str(&format!(
            "| {k} | {} | {} | [{name}]({name}) |\n",
            first.map_or("–", |x| x.chosen.as_str()),
            next.map_or("–", |x| x.chosen.as_str())
        ));
        println!("wrote {}", a.out.join(&name).display());
    }
    selfheal_report::write_text(&a.out.join("README.md"), &index)?;
    println!("wrote {}", a.out.join("README.md").display());
    Ok(())
}
