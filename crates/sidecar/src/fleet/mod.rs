//! The daemon as one replica of a fleet: leases, fencing, and the shared
//! policy (issue 18). Absent a `[fleet]` section none of this runs and the
//! daemon acts for every pipeline, as one process always did.
//!
//! Why this shape: the rules (who may take a lease, the fence, the shard,
//! the merge) are pure and live in `selfheal_fleet`; what is left here is
//! I/O on a timer, kept out of the decision core. Three tokio tasks talk to
//! the daemon's loop through channels and one `watch` value:
//!
//! - the **lease keeper** (`keeper`): every `renew_secs`, heartbeat
//!   `replica/{id}`, list the lease table, compute this replica's pipelines by
//!   rendezvous sharding over the live heartbeats (`selfheal_fleet::shard`),
//!   take or renew their leases (up to 16 calls at once; when the list fails
//!   the leases held are still renewed), release those no longer ours (once
//!   no action of ours runs on them; never one an aborted action of ours ran
//!   on: that one lapses), forget pipelines the daemon evicted as idle, and
//!   publish the result ([`Held`], with each lease's monotonic deadline) through a
//!   `tokio::sync::watch`. The decision core reads it through [`LeaseGate`]
//!   ([`crate::decide::ActGate`]) on every window without waiting: it acts for
//!   a pipeline only while the lease `may_act` (more than `margin_secs`
//!   left), stamps the action's idempotency key with the lease epoch, and the
//!   daemon cancels an action still running when less than half the margin
//!   is left, so a replica that cannot renew stops before another can start;
//! - the **policy poller** (`poll_policy`): `GET current` with the last
//!   ETag (`If-None-Match`); on a change, fetch the version, check it fits the
//!   running model ([`fit`]: encoder, detector, actions, state count) and
//!   hand its table to the loop, which swaps it in between two windows;
//!   a misfit is logged and the running table kept;
//! - the **delta pusher** (`push_deltas`): every `push_deltas_secs` the loop
//!   sends a copy of its table; the pusher stores the online visits and Q
//!   values learned since the last push as a delta for `selfheal fleet merge`,
//!   under a key fixed per (replica, base version, sequence), retried as is
//!   until stored once; before a swap, the old table's last delta is pushed.
//!
//! What happens when a replica dies: its heartbeat and leases lapse after at
//! most `lease_secs`; at their next tick the others see it gone, the shard
//! moves its pipelines to them, and they take the leases with the next epoch
//! (at most `lease_secs + renew_secs` after the death). An action it had
//! started was started with more than `margin_secs` of lease left, so it had
//! that long to finish before anyone else could act.

pub mod config;

use crate::decide::ActGate;
use config::{FleetConfig, LeaseBackend};
use selfheal_agent::store::ModelFile;
use selfheal_agent::QTable;
use selfheal_core::StateEncoder;
use selfheal_fleet::shard::{self, heartbeat_key, HEARTBEAT_PREFIX};
use selfheal_fleet::{
    DynamoLeases, Fetched, KubeLeases, Lease, LeaseError, LeaseRecord, LeaseStore, PolicyDelta, PolicyStore,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use selfheal_fleet as lib;

/// The lease store of a replica: one of the backends of `selfheal_fleet`.
pub enum Leases {
    /// A DynamoDB table.
    Dynamo(DynamoLeases),
    /// Kubernetes Lease objects.
    Kube(Box<KubeLeases>),
}

impl LeaseStore for Leases {
    async fn try_acquire(
        &self,
        key: &str,
        holder: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        match self {
            Leases::Dynamo(s) => s.try_acquire(key, holder, now_ms, ttl).await,
            Leases::Kube(s) => s.try_acquire(key, holder, now_ms, ttl).await,
        }
    }
    async fn renew(&self, lease: &Lease, now_ms: i64, ttl: Duration) -> Result<Option<Lease>, LeaseError> {
        match self {
            Leases::Dynamo(s) => s.renew(lease, now_ms, ttl).await,
            Leases::Kube(s) => s.renew(lease, now_ms, ttl).await,
        }
    }
    async fn release(&self, lease: &Lease) -> Result<bool, LeaseError> {
        match self {
            Leases::Dynamo(s) => s.release(lease).await,
            Leases::Kube(s) => s.release(lease).await,
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, LeaseError> {
        match self {
            Leases::Dynamo(s) => s.list(prefix).await,
            Leases::Kube(s) => s.list(prefix).await,
        }
    }
}

/// A pipeline's lease as the table shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The replica holding (or last holding) it.
    pub holder: String,
    /// Its epoch.
    pub epoch: u64,
    /// Unexpired at the keeper's last look.
    pub live: bool,
}

/// What the lease keeper last saw and holds; published through a `watch`.
#[derive(Clone, Debug, Default)]
pub struct Held {
    /// The pipeline leases this replica holds and may act under.
    pub leases: BTreeMap<String, Lease>,
    /// Leases the shard gave to another replica, still renewed only while
    /// an action of ours runs on them: no new action starts under them.
    pub kept: BTreeMap<String, Lease>,
    /// Every pipeline lease of the table (for `/metrics`).
    pub holders: BTreeMap<String, Holder>,
    /// Live replicas, this one included.
    pub replicas: Vec<String>,
    /// Per lease held or kept, its expiry on this process's monotonic clock:
    /// when the take or renewal that set it was sent, plus the lease time. A
    /// wall clock stepped back cannot stretch a lease past it.
    pub deadlines: BTreeMap<String, Instant>,
}

impl Held {
    /// Milliseconds left on `lease` at `now_ms` (wall) and `now` (monotonic):
    /// the earlier of its wall-clock expiry and its monotonic deadline.
    pub fn left_ms(&self, lease: &Lease, now_ms: i64, now: Instant) -> i64 {
        let wall = lease.expires_at_ms() - now_ms;
        match self.deadlines.get(lease.key()) {
            Some(d) if *d > now => wall.min(i64::try_from((*d - now).as_millis()).unwrap_or(i64::MAX)),
            Some(_) => wall.min(0),
            None => wall,
        }
    }
}

/// The decision core's view of the leases ([`ActGate`]).
#[derive(Clone)]
pub struct LeaseGate {
    held: watch::Receiver<Arc<Held>>,
    margin: Duration,
}

impl LeaseGate {
    /// A gate over what `held` publishes, acting only with more than `margin` left.
    pub fn new(held: watch::Receiver<Arc<Held>>, margin: Duration) -> LeaseGate {
        LeaseGate { held, margin }
    }

    /// The margin: no action starts with less lease left than this.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// Whether an action already running for `pipeline` may go on at
    /// `now_ms`: the lease still has more than half the margin left.
    pub fn may_continue(&self, pipeline: &str, now_ms: i64) -> bool {
        let held = self.held.borrow().clone();
        let half = i64::try_from((self.margin / 2).as_millis()).unwrap_or(i64::MAX);
        held.leases
            .get(pipeline)
            .or_else(|| held.kept.get(pipeline))
            .is_some_and(|l| held.left_ms(l, now_ms, Instant::now()) > half)
    }
}

impl ActGate for LeaseGate {
    fn may_act(&self, pipeline: &str, now_ms: i64) -> Result<u64, String> {
        let held = self.held.borrow().clone();
        let margin = i64::try_from(self.margin.as_millis()).unwrap_or(i64::MAX);
        match held.leases.get(pipeline) {
            Some(l) if held.left_ms(l, now_ms, Instant::now()) > margin => Ok(l.epoch()),
            Some(l) => Err(format!(
                "lease epoch {} has {} ms left, within the {} ms margin",
                l.epoch(),
                held.left_ms(l, now_ms, Instant::now()),
                margin
            )),
            None => match held.holders.get(pipeline) {
                Some(h) if h.live => Err(format!("held by {} (epoch {})", h.holder, h.epoch)),
                _ => Err("no lease taken yet".into()),
            },
        }
    }
}

/// The shared policy: where it lives and what it must fit.
pub struct PolicyLink {
    /// The S3 store.
    pub store: Arc<PolicyStore>,
    /// The model the daemon started with: a fetched version must fit it ([`fit`]).
    pub running: ModelFile,
    /// The encoder that describes states (for the deltas' `desc`).
    pub describe: Arc<dyn StateEncoder + Send + Sync>,
}

/// A replica's parts, built from `[fleet]` by the binary ([`Fleet::connect`]).
pub struct Fleet {
    /// The section.
    pub cfg: FleetConfig,
    /// This replica's id.
    pub replica: String,
    /// The lease store.
    pub leases: Arc<Leases>,
    /// The shared policy, if `[fleet.policy_store]` is set.
    pub policy: Option<PolicyLink>,
}

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A setting.
    #[error("[fleet]: {0}")]
    Config(String),
    /// The lease store.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// Kubernetes client configuration.
    #[error("[fleet.leases] kubernetes: {0}")]
    Kube(String),
}

impl Fleet {
    /// Build the replica's stores from `cfg`: DynamoDB and S3 through the
    /// given SDK clients (built by the caller from `[aws]`), Kubernetes
    /// through the in-cluster service account or the kubeconfig. Creates the
    /// DynamoDB table when `create_table` says so and it is missing.
    ///
    /// # Errors
    /// [`FleetError`] naming the setting or the store that failed.
    pub async fn connect(
        cfg: &FleetConfig,
        dynamodb: lib::aws_sdk_dynamodb::Client,
        s3: lib::aws_sdk_s3::Client,
        running: ModelFile,
        describe: Arc<dyn StateEncoder + Send + Sync>,
    ) -> Result<Fleet, FleetError> {
        let replica = cfg.replica(|k| std::env::var(k).ok()).map_err(FleetError::Config)?;
        let leases = match &cfg.leases {
            LeaseBackend::Dynamodb { table, create_table } => {
                let l = DynamoLeases::new(dynamodb, table);
                if *create_table {
                    match l.create_table().await {
                        Ok(()) => tracing::info!(table = %table, "lease table created"),
                        Err(e) if e.to_string().contains("ResourceInUse") => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Leases::Dynamo(l)
            }
            LeaseBackend::Kubernetes { namespace } => {
                let client = lib::kube::Client::try_default().await.map_err(|e| FleetError::Kube(e.to_string()))?;
                Leases::Kube(Box::new(KubeLeases::new(client, namespace)))
            }
        };
        let policy = cfg.policy_store.as_ref().map(|p| PolicyLink {
            store: Arc::new(PolicyStore::new(s3, p.bucket.clone(), &p.prefix)),
            running,
            describe,
        });
        Ok(Fleet { cfg: cfg.clone(), replica, leases: Arc::new(leases), policy })
    }

    /// Start the keeper (and the policy tasks); the returned [`Running`] is
    /// what the daemon's loop uses.
    pub fn start(self) -> Running {
        let (tx, rx) = watch::channel(Arc::new(Held::default()));
        let gate = LeaseGate::new(rx, self.cfg.margin());
        let configured: BTreeSet<String> = self.cfg.pipelines.iter().cloned().collect();
        let seen = Arc::new(Mutex::new(configured.clone()));
        let busy = Arc::new(Mutex::new(BTreeSet::new()));
        let abandoned = Arc::new(Mutex::new(BTreeSet::new()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(keeper(Keeper {
            store: self.leases.clone(),
            me: self.replica.clone(),
            ttl: self.cfg.lease(),
            every: self.cfg.renew(),
            seen: seen.clone(),
            busy: busy.clone(),
            abandoned: abandoned.clone(),
            publish: tx,
            stop: stop_rx.clone(),
        }))];
        let (swaps, snapshots, push_every) = match (self.policy, self.cfg.policy_store.clone()) {
            (Some(link), Some(p)) => {
                let link = Arc::new(link);
                let (swap_tx, swap_rx) = mpsc::channel(4);
                let (snap_tx, snap_rx) = mpsc::channel(2);
                tasks.push(tokio::spawn(poll_policy(
                    link.clone(),
                    Duration::from_secs_f64(p.poll_secs),
                    swap_tx,
                    stop_rx.clone(),
                )));
                tasks.push(tokio::spawn(push_deltas(link, self.replica.clone(), snap_rx)));
                (Some(swap_rx), Some(snap_tx), Some(Duration::from_secs_f64(p.push_deltas_secs)))
            }
            _ => (None, None, None),
        };
        tracing::info!(replica = %self.replica, lease_secs = self.cfg.lease_secs, renew_secs = self.cfg.renew_secs,
            margin_secs = self.cfg.margin_secs, policy_store = swaps.is_some(), "fleet replica starting");
        Running {
            replica: self.replica,
            gate,
            seen,
            configured,
            busy,
            abandoned,
            swaps,
            snapshots,
            push_every,
            last_push: std::time::Instant::now(),
            stop: stop_tx,
            tasks,
        }
    }
}

/// A new policy table for the loop to swap in.
pub struct Swap {
    /// The version.
    pub version: u64,
    /// Its table, checked to fit ([`fit`]).
    pub table: QTable,
}

/// A copy of the loop's table for the delta pusher.
pub struct Snapshot {
    /// The version the table descends from (`None`: not from the store).
    pub version: Option<u64>,
    /// The table.
    pub table: QTable,
    /// Taken right after a swap: the base of later deltas, not a delta.
    pub rebase: bool,
}

/// The fleet as the daemon's loop sees it.
pub struct Running {
    /// This replica's id.
    pub replica: String,
    /// The lease gate (also set on the controller).
    pub gate: LeaseGate,
    seen: Arc<Mutex<BTreeSet<String>>>,
    configured: BTreeSet<String>,
    busy: Arc<Mutex<BTreeSet<String>>>,
    abandoned: Arc<Mutex<BTreeSet<String>>>,
    /// New policy versions to swap in; `None` without a policy store.
    pub swaps: Option<mpsc::Receiver<Swap>>,
    snapshots: Option<mpsc::Sender<Snapshot>>,
    push_every: Option<Duration>,
    last_push: std::time::Instant,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// A window of `pipeline` arrived: lease it from now on.
    pub fn watch(&self, pipeline: &str) {
        use crate::LockExt;
        let mut seen = self.seen.locked();
        if !seen.contains(pipeline) {
            seen.insert(pipeline.to_string());
        }
    }

    /// The daemon evicted these idle pipelines: stop leasing them (those
    /// named in `fleet.pipelines` stay). The keeper releases their leases at
    /// its next tick, so the table does not grow with every pipeline ever seen.
    pub fn forget(&self, pipelines: &[String]) {
        use crate::LockExt;
        let mut seen = self.seen.locked();
        for p in pipelines.iter().filter(|p| !self.configured.contains(*p)) {
            seen.remove(p);
        }
    }

    /// An action of ours runs (`true`) or ended on `pipeline`: its lease is
    /// kept, not released, while one runs.
    pub fn busy(&self, pipeline: &str, on: bool) {
        use crate::LockExt;
        let mut busy = self.busy.locked();
        if on {
            busy.insert(pipeline.to_string());
        } else {
            busy.remove(pipeline);
        }
    }

    /// An action of ours on `pipeline` was aborted (lease ran low, or
    /// shutdown): what it started may still run (a Glue run already
    /// requested, a command's grandchild), so its lease is never released,
    /// only left to lapse; no other replica acts before it expires.
    pub fn abandon(&self, pipeline: &str) {
        use crate::LockExt;
        self.abandoned.locked().insert(pipeline.to_string());
    }

    /// Hand the table to the delta pusher when a push is due.
    pub fn snapshot(&mut self, version: Option<u64>, table: &QTable) {
        let (Some(tx), Some(every)) = (&self.snapshots, self.push_every) else { return };
        if self.last_push.elapsed() < every {
            return;
        }
        self.last_push = std::time::Instant::now();
        if tx.try_send(Snapshot { version, table: table.clone(), rebase: false }).is_err() {
            tracing::warn!("the policy delta pusher is behind; this push is skipped");
        }
    }

    /// A new version was swapped in: push what the old table (`old`, of
    /// version `old_version`) learned since the last push as a final delta,
    /// then make the new table (`new`, version `version`) the base of later
    /// deltas. Both are queued in order (waiting for room, the pusher's
    /// calls being bounded by [`PUSH_TIMEOUT`]); the push timer runs on.
    pub async fn swapped(&mut self, old_version: Option<u64>, old: QTable, version: u64, new: &QTable) {
        let Some(tx) = &self.snapshots else { return };
        let last = Snapshot { version: old_version, table: old, rebase: false };
        let rebase = Snapshot { version: Some(version), table: new.clone(), rebase: true };
        if tx.send(last).await.is_err() || tx.send(rebase).await.is_err() {
            tracing::warn!("the policy delta pusher has stopped; deltas are no longer pushed");
        }
    }

    /// The `/metrics` lines of the fleet.
    pub fn render(&self, policy_version: Option<u64>) -> String {
        let held = self.gate.held.borrow().clone();
        let mut o = String::new();
        let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = writeln!(o, "# HELP selfheal_leases_held Pipeline leases this replica holds.");
        let _ = writeln!(o, "# TYPE selfheal_leases_held gauge");
        let _ = writeln!(o, "selfheal_leases_held{{replica=\"{}\"}} {}", esc(&self.replica), held.leases.len());
        let _ = writeln!(o, "# HELP selfheal_fleet_replicas Live replicas in the lease table, this one included.");
        let _ = writeln!(o, "# TYPE selfheal_fleet_replicas gauge");
        let _ = writeln!(o, "selfheal_fleet_replicas {}", held.replicas.len());
        let _ = writeln!(
            o,
            "# HELP selfheal_lease_holder Per pipeline, the replica its lease names (1 while unexpired, 0 lapsed)."
        );
        let _ = writeln!(o, "# TYPE selfheal_lease_holder gauge");
        for (p, h) in &held.holders {
            let _ = writeln!(
                o,
                "selfheal_lease_holder{{pipeline=\"{}\",holder=\"{}\"}} {}",
                esc(p),
                esc(&h.holder),
                u8::from(h.live)
            );
        }
        let _ = writeln!(o, "# HELP selfheal_lease_epoch Per pipeline, the epoch of its lease (takeovers so far).");
        let _ = writeln!(o, "# TYPE selfheal_lease_epoch gauge");
        for (p, h) in &held.holders {
            let _ = writeln!(o, "selfheal_lease_epoch{{pipeline=\"{}\"}} {}", esc(p), h.epoch);
        }
        if let Some(v) = policy_version {
            let _ = writeln!(o, "# HELP selfheal_policy_version The shared policy version deciding now.");
            let _ = writeln!(o, "# TYPE selfheal_policy_version gauge");
            let _ = writeln!(o, "selfheal_policy_version {v}");
        }
        o
    }

    /// Stop the tasks; the keeper releases the leases it holds first
    /// (bounded by `within`), so a standby takes over at once.
    pub async fn stop(self, within: Duration) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.into_iter();
        if let Some(keeper) = tasks.next() {
            if tokio::time::timeout(within, keeper).await.is_err() {
                tracing::warn!("the lease keeper did not release its leases in time; they lapse by themselves");
            }
        }
        for t in tasks {
            t.abort();
        }
    }
}

/// The line `/readyz` adds for a replica: `replica R: N leases held ["p1", ...]`.
/// A standby holding none is ready too: it watches and takes over.
pub fn ready_line(replica: &str, gate: &LeaseGate) -> String {
    let held = gate.held.borrow().clone();
    let names: Vec<&str> = held.leases.keys().map(String::as_str).collect();
    format!("replica {replica}: {} leases held {names:?}", names.len())
}

/// The keeper's inputs.
struct Keeper {
    store: Arc<Leases>,
    me: String,
    ttl: Duration,
    every: Duration,
    seen: Arc<Mutex<BTreeSet<String>>>,
    busy: Arc<Mutex<BTreeSet<String>>>,
    abandoned: Arc<Mutex<BTreeSet<String>>>,
    publish: watch::Sender<Arc<Held>>,
    stop: watch::Receiver<bool>,
}

/// The lease keeper task (see the module docs). Store errors are logged and
/// retried at the next tick; a lease that cannot be renewed stops allowing
/// actions by itself as its expiry nears.
async fn keeper(mut k: Keeper) {
    use crate::LockExt;
    let now = crate::now_ms;
    let mut heartbeat: Option<Lease> = None;
    let mut mine: BTreeMap<String, Lease> = BTreeMap::new();
    let mut draining: BTreeSet<String> = BTreeSet::new();
    let mut table: Vec<LeaseRecord> = Vec::new();
    let mut deadlines: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(k.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = k.stop.changed() => break,
        }
        let hb = match &heartbeat {
            Some(l) => within(k.every, k.store.renew(l, now(), k.ttl)).await,
            None => within(k.every, k.store.try_acquire(&heartbeat_key(&k.me), &k.me, now(), k.ttl)).await,
        };
        match hb {
            Ok(l) => heartbeat = l,
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying next tick"),
        }
        let listed = match within(k.every, k.store.list("")).await {
            Ok(t) => {
                table = t;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the lease table; renewing the leases held, no takes this tick");
                false
            }
        };
        let pipelines: Vec<String> = k.seen.locked().iter().cloned().collect();
        let t = now();
        let want: BTreeSet<String> = if listed {
            shard::my_pipelines(&pipelines, &table, &k.me, t).into_iter().map(str::to_string).collect()
        } else {
            // The shard is unknown this tick: keep what we act on.
            pipelines.iter().filter(|p| mine.contains_key(*p) && !draining.contains(*p)).cloned().collect()
        };
        // Read after the last publish: an action started under a lease we
        // published is marked busy by now, and none starts under one we
        // stopped publishing (the gate reads the published leases).
        let busy = k.busy.locked().clone();
        // A lease the shard moved away is drained first: unpublished for a
        // whole tick (no new action) and kept while an action runs, then released.
        let drained = std::mem::take(&mut draining);
        let mut calls: Vec<(String, Call)> = Vec::new();
        for p in &pipelines {
            match (mine.get(p), want.contains(p)) {
                (Some(l), true) => calls.push((p.clone(), Call::Renew(l.clone()))),
                (Some(l), false) if !drained.contains(p) || busy.contains(p) => {
                    draining.insert(p.clone());
                    calls.push((p.clone(), Call::Renew(l.clone())));
                }
                (None, true) => calls.push((p.clone(), Call::Take)),
                _ => {}
            }
        }
        for (p, sent, r) in call_all(&k.store, &k.me, k.ttl, k.every, calls).await {
            match r {
                Ok(Some(l)) => {
                    mine.insert(p.clone(), l);
                    deadlines.insert(p.clone(), sent + k.ttl);
                }
                Ok(None) => {
                    draining.remove(&p);
                    if mine.remove(&p).is_some() {
                        tracing::warn!(pipeline = %p, "lease lost: taken over; acting stops");
                    }
                }
                Err(e) => tracing::warn!(pipeline = %p, error = %e, "lease call failed; retrying next tick"),
            }
        }
        // Release what the shard gave to another replica, drained, with no action of ours on it.
        let gone: Vec<String> = mine.keys().filter(|p| !want.contains(*p) && !draining.contains(*p)).cloned().collect();
        for p in gone {
            if let Some(l) = mine.remove(&p) {
                if k.abandoned.locked().remove(&p) {
                    tracing::warn!(pipeline = %p, epoch = l.epoch(), "lease dropped unreleased: an aborted action of ours may still run; it lapses by itself");
                    continue;
                }
                match within(k.every, k.store.release(&l)).await {
                    Ok(_) => tracing::info!(pipeline = %p, epoch = l.epoch(), "lease released: the shard moved it"),
                    Err(e) => tracing::warn!(pipeline = %p, error = %e, "release failed; the lease lapses by itself"),
                }
            }
        }
        // What we do not want but still renew (an action runs) is not published: no new actions.
        let (acting, kept): (BTreeMap<String, Lease>, BTreeMap<String, Lease>) =
            mine.iter().map(|(p, l)| (p.clone(), l.clone())).partition(|(p, _)| want.contains(p));
        deadlines.retain(|p, _| mine.contains_key(p));
        publish(&k.publish, &acting, kept, &table, t, &deadlines);
    }
    // Shutdown: give every lease back so a standby takes over at once, but
    // those with an action of ours still running or aborted: those lapse.
    let keep: BTreeSet<String> = k.busy.locked().union(&k.abandoned.locked()).cloned().collect();
    for (p, l) in &mine {
        if keep.contains(p) {
            tracing::warn!(pipeline = %p, epoch = l.epoch(), expires_at_ms = l.expires_at_ms(),
                "lease left to lapse: an aborted action of ours may still run");
            continue;
        }
        if let Err(e) = within(k.every, k.store.release(l)).await {
            tracing::warn!(key = %l.key(), error = %e, "release at shutdown failed; the lease lapses by itself");
        }
    }
    for l in heartbeat.iter() {
        if let Err(e) = within(k.every, k.store.release(l)).await {
            tracing::warn!(key = %l.key(), error = %e, "release at shutdown failed; the lease lapses by itself");
        }
    }
    let _ = k.publish.send(Arc::new(Held::default()));
    tracing::info!(
        released = mine.len() - keep.len().min(mine.len()),
        left_to_lapse = keep.len(),
        "fleet replica stopped; leases released"
    );
}

/// How many lease calls the keeper has in flight at once: a fleet of
/// hundreds of pipelines renews within a renewal period, without flooding
/// the store.
const CONCURRENT_CALLS: usize = 16;

/// A lease call of the keeper.
enum Call {
    Renew(Lease),
    Take,
}

/// Run `calls` for their pipelines, at most [`CONCURRENT_CALLS`] at a time,
/// each bounded by `limit` ([`within`]); results in completion order, each
/// with the monotonic instant its request was sent.
async fn call_all(
    store: &Arc<Leases>,
    me: &str,
    ttl: Duration,
    limit: Duration,
    calls: Vec<(String, Call)>,
) -> Vec<(String, Instant, Result<Option<Lease>, LeaseError>)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CALLS));
    let mut set = tokio::task::JoinSet::new();
    for (p, call) in calls {
        let (store, permits, me) = (store.clone(), permits.clone(), me.to_string());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let sent = Instant::now();
            let r = match &call {
                Call::Renew(l) => within(limit, store.renew(l, crate::now_ms(), ttl)).await,
                Call::Take => within(limit, store.try_acquire(&p, &me, crate::now_ms(), ttl)).await,
            };
            (p, sent, r)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "a lease call task ended abnormally; retrying next tick"),
        }
    }
    out
}

/// One store call, given up after `limit` (a renewal period): a slow store
/// must not hold the keeper past the leases it should renew. A call given up
/// may still have landed; the lease rules make that safe (an unknown take
/// lapses by itself, an unknown renewal only extends a lease we still obey
/// by its older expiry).
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, LeaseError>>,
) -> Result<T, LeaseError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(LeaseError::Store {
            store: "lease store".into(),
            op: "call",
            key: String::new(),
            message: format!("no answer within {} ms", limit.as_millis()),
        })
    })
}

/// Publish the leases held and the table's view.
fn publish(
    tx: &watch::Sender<Arc<Held>>,
    mine: &BTreeMap<String, Lease>,
    kept: BTreeMap<String, Lease>,
    table: &[LeaseRecord],
    now: i64,
    deadlines: &BTreeMap<String, Instant>,
) {
    let holders = table
        .iter()
        .filter(|r| !r.key.starts_with(HEARTBEAT_PREFIX))
        .map(|r| (r.key.clone(), Holder { holder: r.holder.clone(), epoch: r.epoch, live: r.live(now) }))
        .collect();
    let replicas = shard::live_replicas(table, now);
    let deadlines = deadlines.clone();
    let _ = tx.send(Arc::new(Held { leases: mine.clone(), kept, holders, replicas, deadlines }));
}

/// Whether `new` can replace `running`: same encoder id and the whole
/// encoder configuration (detector, worker levels, base level, driver
/// workers: a state number means the same thing only under all of them),
/// same action columns and state count. Returns
/// its table, built with `describe` (the running encoder).
///
/// # Errors
/// What differs, in words.
pub fn fit(running: &ModelFile, new: &ModelFile, describe: &dyn StateEncoder) -> Result<QTable, String> {
    if new.encoder.id != running.encoder.id {
        return Err(format!("encoder {:?} is not the running {:?}", new.encoder.id, running.encoder.id));
    }
    let (n, r) = (&new.encoder.config, &running.encoder.config);
    if n.detector != r.detector {
        return Err(format!("detector {:?} is not the running {:?}", n.detector, r.detector));
    }
    if n.worker_levels != r.worker_levels {
        return Err(format!("worker levels {:?} are not the running {:?}", n.worker_levels, r.worker_levels));
    }
    if n.base_level != r.base_level {
        return Err(format!("base level {} is not the running {}", n.base_level, r.base_level));
    }
    if n.driver_workers != r.driver_workers {
        return Err(format!("driver workers {} are not the running {}", n.driver_workers, r.driver_workers));
    }
    // Any field added to the encoder configuration later counts too.
    if n != r {
        return Err(format!("encoder configuration {n:?} is not the running {r:?}"));
    }
    if new.actions != running.actions {
        return Err(format!("actions {:?} are not the running {:?}", new.actions, running.actions));
    }
    if new.num_states != running.num_states {
        return Err(format!("{} states, the running model {}", new.num_states, running.num_states));
    }
    new.table(describe).map_err(|e| e.to_string())
}

/// The policy poller task (see the module docs).
async fn poll_policy(
    link: Arc<PolicyLink>,
    every: Duration,
    swaps: mpsc::Sender<Swap>,
    mut stop: watch::Receiver<bool>,
) {
    let mut etag: Option<String> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match link.store.fetch_if_changed(etag.as_deref()).await {
            Ok(Fetched::Unchanged) => {}
            Ok(Fetched::Changed { etag: e, version }) => {
                etag = Some(e);
                match fit(&link.running, &version.model, link.describe.as_ref()) {
                    Ok(table) => {
                        tracing::info!(version = version.version, parent = ?version.parent, "new shared policy version");
                        if swaps.send(Swap { version: version.version, table }).await.is_err() {
                            return;
                        }
                    }
                    Err(why) => tracing::error!(version = version.version, reason = %why,
                        "shared policy version refused: it does not fit the running model; keeping the running table"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "policy store poll failed; retrying next poll"),
        }
    }
}

/// How long one delta push may take before it is given up (and retried
/// as is, under the same key, with the next snapshot).
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The delta pusher task (see the module docs). A delta is pushed from the
/// table of the last successful push (or of the last swap) to the new one,
/// under a key fixed by (replica, base version, sequence)
/// ([`PolicyStore::push_delta_as`]). A failed or timed-out push is retried
/// as is (same delta, same key: stored at most once) before any newer one,
/// so learning is neither lost nor counted twice. A swap first queues a
/// final delta of the old table, then the new base ([`Running::swapped`]).
/// Known limit: a try that timed out but landed, was merged, and then
/// deleted by the next merge before the retry, would be stored again; the
/// retry comes within one push period, far shorter than two merges apart.
async fn push_deltas(link: Arc<PolicyLink>, replica: String, mut snaps: mpsc::Receiver<Snapshot>) {
    let mut base: Option<(u64, QTable)> = None;
    let mut seq: u64 = 0;
    let mut unsent: Option<(PolicyDelta, u64, QTable)> = None;
    while let Some(s) = snaps.recv().await {
        if let Some((d, n, t)) = unsent.take() {
            match push_one(&link, &d, n).await {
                Ok(key) => {
                    tracing::info!(key = %key, visits = d.total_visits(), base_version = d.base_version,
                        "policy delta pushed (retried)");
                    base = Some((d.base_version, t));
                }
                Err(e) if s.rebase => tracing::warn!(error = %e, base_version = d.base_version,
                    "policy delta push failed again; dropped: a new version was swapped in"),
                Err(e) => {
                    tracing::warn!(error = %e, "policy delta push failed again; retrying with the next push");
                    unsent = Some((d, n, t));
                    continue;
                }
            }
        }
        let Some(v) = s.version else { continue };
        if s.rebase {
            base = Some((v, s.table));
            continue;
        }
        let Some((bv, bt)) = &base else { continue };
        if *bv != v {
            continue;
        }
        let delta = match PolicyDelta::between(&replica, v, bt, &s.table, link.describe.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "policy delta not computed; rebasing on the current table");
                base = Some((v, s.table));
                continue;
            }
        };
        if delta.rows.is_empty() {
            continue;
        }
        let n = seq;
        seq += 1;
        match push_one(&link, &delta, n).await {
            Ok(key) => {
                tracing::info!(key = %key, visits = delta.total_visits(), base_version = v, "policy delta pushed");
                base = Some((v, s.table));
            }
            Err(e) => {
                tracing::warn!(error = %e, "policy delta push failed; retrying it as is with the next push");
                unsent = Some((delta, n, s.table));
            }
        }
    }
}

/// One push, bounded by [`PUSH_TIMEOUT`].
async fn push_one(link: &PolicyLink, delta: &PolicyDelta, seq: u64) -> Result<String, String> {
    match tokio::time::timeout(PUSH_TIMEOUT, link.store.push_delta_as(delta, seq)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", PUSH_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests;
