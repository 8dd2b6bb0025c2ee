//! `selfheal fleet`: fold the models of a fanned-out training run, and move
//! the shared policy in S3 (merge the replicas' deltas, roll out, roll back).
//!
//! Why a command and not a script: the fold must use the fleet's one
//! visit-weighted merge rule (`selfheal_fleet::merge_models`) and refuse
//! models that do not share an encoder and detector, and every write to the
//! policy store must go through its conditional writes (`If-None-Match: *`,
//! `If-Match`), which a script copying objects would not honour. Each
//! subcommand is a thin wrapper over one `selfheal_fleet` function.
//!
//! The whole command needs the `aws` feature (the fleet crate links the AWS SDK).

use anyhow::Result;
use std::path::PathBuf;

/// Fleet operations: fold shard models; merge, roll out and roll back the shared policy in S3.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Merge(MergeArgs),
    Rollout(RolloutArgs),
    Rollback(RollbackArgs),
    Status(StatusArgs),
}

/// Where the shared policy lives: `s3://BUCKET/PREFIX/` (`versions/vNNNNNN.json`,
/// `current`, `deltas/REPLICA/...`). Credentials and region come from the
/// standard AWS chain (`AWS_REGION`, `AWS_PROFILE`, ...; `AWS_ENDPOINT_URL`
/// for an S3-compatible server).
#[derive(clap::Args, Debug)]
struct Store {
    /// Bucket of the policy store.
    #[arg(long)]
    bucket: String,
    /// Key prefix of the policy store inside the bucket.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Path-style addressing (`http://host/bucket/key`), for S3-compatible
    /// servers (MinIO, a local AWS API server); AWS itself needs none.
    #[arg(long)]
    path_style: bool,
}

/// Fold models into one, or fold the replicas' pending deltas into the next policy version.
///
/// Files: `--out MODEL SHARD...` folds shard models (`selfheal train
/// --shard I/N`): per (state, action), Q averaged weighted by training
/// visits, visits summed, episodes summed. Refuses models of different
/// encoders or detector fingerprints, naming both files; writes nothing then.
///
/// Store: `--bucket B [--prefix P]` folds every pending delta
/// (`deltas/REPLICA/...`) into a new version and makes it current, with
/// optimistic concurrency (a lost race starts over; concurrent merges never
/// lose or double a delta).
#[derive(clap::Args, Debug)]
struct MergeArgs {
    /// Where to write the merged model (written atomically).
    #[arg(long, required_unless_present = "bucket", conflicts_with = "bucket")]
    out: Option<PathBuf>,
    /// The shard models.
    #[arg(required_unless_present = "bucket", conflicts_with = "bucket")]
    models: Vec<PathBuf>,
    /// Merge the deltas pending in this policy store's bucket instead.
    #[arg(long)]
    bucket: Option<String>,
    /// Key prefix of the policy store (with --bucket).
    #[arg(long, default_value = "", requires = "bucket")]
    prefix: String,
    /// Path-style addressing (with --bucket), for S3-compatible servers.
    #[arg(long, requires = "bucket")]
    path_style: bool,
    /// Tries against concurrent writers before giving up (with --bucket).
    #[arg(long, default_value_t = 10, requires = "bucket")]
    attempts: u32,
}

/// Publish a model file as the next policy version and make it current.
///
/// The new version's parent is the current one (so `rollback` returns to
/// it); an empty store is initialised with the model as version 1. Sidecars
/// polling the store swap to it at their next poll. Deltas still pending
/// stay pending and the next merge folds them onto the new version.
#[derive(clap::Args, Debug)]
struct RolloutArgs {
    #[command(flatten)]
    store: Store,
    /// The model file to publish (e.g. the output of `selfheal fleet merge`).
    model: PathBuf,
}

/// Point the sidecars back at an earlier policy version.
///
/// Without `--to`, the parent of the current version. The versions after
/// the target stay readable (`fleet status`), so a rollback can be undone
/// with `rollback --to` the newer number.
#[derive(clap::Args, Debug)]
struct RollbackArgs {
    #[command(flatten)]
    store: Store,
    /// The version to make current [default: the current version's parent].
    #[arg(long)]
    to: Option<u64>,
}

/// Print the current version and every stored version number.
#[derive(clap::Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    store: Store,
}

#[cfg(not(feature = "aws"))]
pub fn run(_a: Args) -> Result<()> {
    anyhow::bail!("selfheal fleet needs the `aws` feature; rebuild with default features")
}

#[cfg(feature = "aws")]
pub fn run(a: Args) -> Result<()> {
    use anyhow::Context;
    match a.command {
        Command::Merge(m) => match m.bucket.clone() {
            Some(bucket) => {
                let store = Store { bucket, prefix: m.prefix.clone(), path_style: m.path_style };
                on_store(&store, |s| async move { merge_store(&s, m.attempts).await })
            }
            None => merge_files(m),
        },
        Command::Rollout(r) => {
            let model = selfheal_agent::store::ModelFile::load(&r.model)
                .with_context(|| format!("reading the model {}", r.model.display()))?;
            let path = r.model.display().to_string();
            on_store(&r.store, |s| async move {
                let (from, to) = s.publish(model, 10).await?;
                match from {
                    Some(from) => println!("rolled out {path} as version {to} (was {from})"),
                    None => println!("initialised the policy store with {path} as version {to}"),
                }
                Ok(())
            })
        }
        Command::Rollback(r) => on_store(&r.store, |s| async move {
            let (from, to) = match r.to {
                Some(to) => (s.rollout(to).await?, to),
                None => s.rollback().await.map_err(|e| match e {
                    selfheal_fleet::PolicyStoreError::NoSuchVersion(0) => {
                        anyhow::anyhow!("the current version has no parent to roll back to; give --to VERSION")
                    }
                    e => e.into(),
                })?,
            };
            println!("rolled back from version {from} to version {to}");
            Ok(())
        }),
        Command::Status(st) => on_store(&st.store, |s| async move {
            let (_, ptr) = s.current().await?;
            let versions = s.versions().await?;
            let list = versions.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
            println!("current {} (pointer generation {})", ptr.version, ptr.generation);
            println!("versions {list}");
            Ok(())
        }),
    }
}

/// Run `f` on the policy store `s` names, on a one-thread runtime.
#[cfg(feature = "aws")]
fn on_store<F, Fut>(s: &Store, f: F) -> Result<()>
where
    F: FnOnce(selfheal_fleet::PolicyStore) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    use selfheal_fleet::aws_sdk_s3 as s3;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let sdk = selfheal_aws::sdk_config(&selfheal_sidecar::config::AwsConfig::default()).await;
        // The SDK's standard retries (throttling, 5xx) on top of the store's
        // own retries of lost conditional writes: a CLI has no guardrails of its own.
        let conf = s3::config::Builder::from(&sdk)
            .retry_config(s3::config::retry::RetryConfig::standard())
            .force_path_style(s.path_style)
            .build();
        let store = selfheal_fleet::PolicyStore::new(s3::Client::from_conf(conf), s.bucket.clone(), &s.prefix);
        f(store).await
    })
}

#[cfg(feature = "aws")]
async fn merge_store(s: &selfheal_fleet::PolicyStore, attempts: u32) -> Result<()> {
    match s.merge(attempts).await? {
        selfheal_fleet::Merged::Nothing { version } => println!("no pending delta; version {version} stays current"),
        selfheal_fleet::Merged::Version { version, deltas, visits, attempts } => {
            println!("merged {deltas} deltas ({visits} online updates) into version {version} in {attempts} tries")
        }
    }
    Ok(())
}

#[cfg(feature = "aws")]
fn merge_files(a: MergeArgs) -> Result<()> {
    use anyhow::Context;
    use selfheal_agent::store::ModelFile;
    let out = a.out.context("--out is required when merging model files")?;
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
    merged.save(&out).with_context(|| format!("writing the merged model to {}", out.display()))?;
    let visits: u64 = merged.states.iter().flat_map(|r| &r.visits).map(|v| u64::from(*v)).sum();
    eprintln!(
        "merged {} models ({} episodes, {visits} visits, {} states) into {}",
        models.len(),
        merged.meta.episodes,
        merged.states.len(),
        out.display()
    );
    Ok(())
}
