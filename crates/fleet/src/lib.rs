//! A fleet of selfheal replicas: who acts for which pipeline, and one shared
//! policy.
//!
//! Why a library apart from the daemon: the rules that keep a fleet from
//! acting twice (leases, fencing, sharding) and from losing what it learned
//! (the merge) are small and pure, and must be tested apart from the I/O
//! around them; the daemon wires them in a few lines:
//!
//! - every `ttl / 3`, [`LeaseStore::try_acquire`] or [`LeaseStore::renew`] the
//!   heartbeat `replica/{id}` and the leases of [`shard::my_pipelines`];
//!   release those no longer in the shard;
//! - before an action, [`Lease::may_act`] with a margin; stamp the action's
//!   idempotency key with [`FencingToken::idempotency_key`]; the actuator
//!   checks it with a [`Fence`];
//! - poll [`PolicyStore::fetch_if_changed`] with the last ETag and swap the
//!   model when it changed; push [`PolicyDelta`]s; `selfheal fleet merge`
//!   calls [`PolicyStore::merge`].
//!
//! Backends: DynamoDB ([`DynamoLeases`]) and S3 ([`PolicyStore`]) through
//! the AWS SDK, tested against a local AWS API server; Kubernetes
//! `coordination.k8s.io/v1` Leases ([`KubeLeases`]) through kube-rs, whose
//! mapping is unit-tested (no API server runs in the tests).

pub mod dynamo;
pub mod fence;
pub mod k8s;
pub mod lease;
pub mod policy;
pub mod shard;
pub mod store;

pub use dynamo::DynamoLeases;
pub use fence::{Fence, Fenced, FencingToken};
pub use k8s::KubeLeases;
/// The Kubernetes client crate, re-exported so callers build a `kube::Client` of the same version.
pub use kube;
pub use lease::{Lease, LeaseError, LeaseRecord, LeaseStore};
pub use policy::{merge, merge_models, DeltaRow, MergeError, PolicyDelta};
pub use store::{Fetched, MergePlan, Merged, PolicyPointer, PolicyStore, PolicyStoreError, PolicyVersion};
/// The SDK crates, re-exported so callers build clients of the same versions.
pub use {aws_sdk_dynamodb, aws_sdk_s3};
