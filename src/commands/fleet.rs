//! `selfheal fleet`: fold the models of a fanned-out training run.
//!
//! Why a command and not a script: the fold must use the fleet's one
//! visit-weighted merge rule (`selfheal_fleet::merge_models`) and refuse
//! models that do not share an encoder and detector, which a script
//! averaging JSON would not know to check.

use anyhow::{Context, Result};
use selfheal_agent::store::ModelFile;
use std::path::PathBuf;

/// Fleet operations on trained models.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Merge(MergeArgs),
}

/// Fold shard models (`selfheal train --shard I/N`) into one model:
/// per (state, action), Q averaged weighted by training visits, visits
/// summed. Refuses models of different encoders or detector fingerprints.
#[derive(clap::Args)]
struct MergeArgs {
    /// Where to write the merged model (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// The shard models.
    #[arg(required = true)]
    models: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Merge(m) => merge(m),
    }
}

fn merge(a: MergeArgs) -> Result<()> {
    let models = a
        .models
        .iter()
        .map(|p| ModelFile::load(p).with_context(|| format!("reading the shard model {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let merged = selfheal_fleet::merge_models(&models).map_err(|e| match e {
        selfheal_fleet::MergeError::Mismatch { index, .. } => {
            anyhow::anyhow!("{e} ({} vs {})", a.models[index].display(), a.models[0].display())
        }
        e => e.into(),
    })?;
    merged.save(&a.out).with_context(|| format!("writing the merged model to {}", a.out.display()))?;
    let visits: u64 = merged.states.iter().flat_map(|r| &r.visits).map(|v| u64::from(*v)).sum();
    eprintln!(
        "merged {} models ({} episodes, {visits} visits, {} states) into {}",
        models.len(),
        merged.meta.episodes,
        merged.states.len(),
        a.out.display()
    );
    Ok(())
}
