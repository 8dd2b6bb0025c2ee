//! The shared policy in S3: immutable versions, a current pointer moved by
//! compare-and-set, and per-replica deltas.
//!
//! Layout under `s3://BUCKET/PREFIX/`:
//!
//! ```text
//! versions/v000042.json    PolicyVersion: the model, its parent, the delta keys it folded
//!                          (immutable; created with `If-None-Match: *`)
//! current                  PolicyPointer {version, generation}: the version sidecars run
//!                          (replaced with `If-Match: <ETag>`; created with `If-None-Match: *`)
//! deltas/REPLICA/vBASE-INCARNATION-SEQ.json PolicyDelta pushed by a replica (created with `If-None-Match: *`)
//! ```
//!
//! Why numbered immutable keys plus a pointer, not S3 object versioning:
//! a version number is readable by people and provenance logs (`v000042`),
//! immutable keys can be cached forever, rollout and rollback are one
//! pointer write, and the pointer is the single compare-and-set that orders
//! every change. S3 conditional writes (`If-None-Match: *` to create,
//! `If-Match` to replace, HTTP 412 `PreconditionFailed` on a lost race;
//! <https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html>)
//! serve both; the local AWS API server the tests use (moto 5.2.5) honours
//! both on `PutObject`, checked by hand and by the tests. The pointer carries
//! a `generation` that grows on every write, so its ETag never repeats
//! (no ABA when a rollback points back at an old version).
//!
//! Merge (optimistic concurrency, [`PolicyStore::merge`]): read the pointer
//! (version `N`, ETag `E`) and version `N`; delete the deltas `N` folded
//! (left over if its merger died before cleaning up); list the remaining
//! deltas; fold them ([`crate::policy::merge`]) into version `M + 1` (`M` the
//! highest version key; created with `If-None-Match: *`, the next number on
//! 412); move the pointer with `If-Match: E`; on 412 start over. Only a merge
//! whose pointer write wins deletes its deltas, and by the time a version is
//! current the deltas of its ancestors are deleted, so each merge folds
//! exactly the deltas that no version of the pointer's lineage holds:
//! concurrent merges never lose or double a delta. A loser's version key
//! stays behind unreferenced (harmless; listed by [`PolicyStore::versions`]).
//!
//! Rollback moves the pointer back; the online learning folded into the
//! versions after the target is discarded with them (they stay readable),
//! except the deltas of a head whose merger died before its cleanup: those
//! are still pending and the next merge folds them onto the target.
//!
//! IAM: `s3:GetObject`, `s3:PutObject`, `s3:DeleteObject` on `PREFIX/*`,
//! `s3:ListBucket` on the bucket with an `s3:prefix` condition.

use crate::policy::{merge, MergeError, PolicyDelta};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use selfheal_agent::ModelFile;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Format tag of a version file.
pub const VERSION_FORMAT: &str = "selfheal-policy-version";
/// Format tag of the pointer.
pub const POINTER_FORMAT: &str = "selfheal-policy-pointer";

/// One immutable policy version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyVersion {
    /// Always [`VERSION_FORMAT`].
    pub format: String,
    /// Its number (`versions/v{version:06}.json`).
    pub version: u64,
    /// The version it was merged from (`None` for the first).
    pub parent: Option<u64>,
    /// Object keys of the deltas folded into it, relative to the prefix.
    pub folded: Vec<String>,
    /// Online updates those deltas carried (Σ Δn).
    pub folded_visits: u64,
    /// The policy.
    pub model: ModelFile,
}

/// The current pointer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPointer {
    /// Always [`POINTER_FORMAT`].
    pub format: String,
    /// The version sidecars run.
    pub version: u64,
    /// Writes of the pointer so far; makes every pointer body (and ETag) unique.
    pub generation: u64,
}

impl PolicyPointer {
    fn new(version: u64, generation: u64) -> PolicyPointer {
        PolicyPointer { format: POINTER_FORMAT.into(), version, generation }
    }
}

/// What [`PolicyStore::fetch_if_changed`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Fetched {
    /// The pointer's ETag is the one given (HTTP 304): keep the running policy.
    Unchanged,
    /// A different pointer: swap to `version`; poll next time with `etag`.
    Changed {
        /// The pointer's ETag.
        etag: String,
        /// The version it names.
        version: Box<PolicyVersion>,
    },
}

/// What a merge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merged {
    /// No pending delta: the pointer stays at `version`.
    Nothing {
        /// The current version.
        version: u64,
    },
    /// A new version is current.
    Version {
        /// Its number.
        version: u64,
        /// Deltas folded.
        deltas: usize,
        /// Online updates folded (Σ Δn).
        visits: u64,
        /// Tries it took (1 without contention).
        attempts: u32,
    },
}

/// A merge computed but not written: see [`PolicyStore::plan_merge`].
#[derive(Clone, Debug, PartialEq)]
pub struct MergePlan {
    /// The pointer's ETag when read (the `If-Match` of the commit).
    pub etag: String,
    /// The version merged from.
    pub base: u64,
    /// The pointer's generation when read.
    pub generation: u64,
    /// Keys of the folded deltas, relative to the prefix.
    pub folded: Vec<String>,
    /// Online updates they carry (Σ Δn).
    pub visits: u64,
    /// The merged policy.
    pub model: ModelFile,
}

/// Why a policy store call failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    /// S3 refused or could not be reached.
    #[error("s3://{bucket}/{key}: {op} failed: {message}")]
    S3 {
        /// Bucket.
        bucket: String,
        /// Object key.
        key: String,
        /// Operation.
        op: &'static str,
        /// The service's message.
        message: String,
    },
    /// An object is not what this crate writes there.
    #[error("s3://{bucket}/{key} is malformed: {message}")]
    Malformed {
        /// Bucket.
        bucket: String,
        /// Object key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// No pointer yet: run [`PolicyStore::init`] first.
    #[error("s3://{bucket}/{prefix}current does not exist: the policy store is not initialised")]
    NotInitialised {
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
    },
    /// `init` on a store that has a pointer.
    #[error("the policy store s3://{bucket}/{prefix} is already initialised")]
    AlreadyInitialised {
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
    },
    /// A version that does not exist.
    #[error("policy version {0} does not exist")]
    NoSuchVersion(u64),
    /// Every try lost a race.
    #[error("gave up after {attempts} tries: other writers moved the pointer each time")]
    Contention {
        /// Tries made.
        attempts: u32,
    },
    /// A pending delta could not be folded (it stays in place).
    #[error("delta {key}: {source}")]
    BadDelta {
        /// Its key.
        key: String,
        /// Why.
        source: MergeError,
    },
}

/// The outcome of a conditional PUT.
enum Put {
    Done,
    PreconditionFailed,
}

/// The policy store under one bucket and prefix.
#[derive(Debug)]
pub struct PolicyStore {
    client: Client,
    bucket: String,
    prefix: String,
    seq: AtomicU64,
    /// When this store handle was made (Unix ms): part of every delta key,
    /// so a restarted replica with the same id never reuses a key.
    incarnation: u128,
}

/// The object key of version `n`, relative to the prefix.
pub fn version_key(n: u64) -> String {
    format!("versions/v{n:06}.json")
}

impl PolicyStore {
    /// The store at `s3://bucket/prefix` (a non-empty prefix gets a trailing `/`).
    pub fn new(client: Client, bucket: impl Into<String>, prefix: &str) -> PolicyStore {
        let mut prefix = prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let incarnation =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        PolicyStore { client, bucket: bucket.into(), prefix, seq: AtomicU64::new(0), incarnation }
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn s3_err<E: std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        op: &'static str,
        key: &str,
        e: &SdkError<E, R>,
    ) -> PolicyStoreError {
        PolicyStoreError::S3 {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            op,
            message: DisplayErrorContext(e).to_string(),
        }
    }

    fn malformed(&self, key: &str, message: String) -> PolicyStoreError {
        PolicyStoreError::Malformed { bucket: self.bucket.clone(), key: key.to_string(), message }
    }

    /// PUT `body` at `rel` with `If-None-Match: *` (`if_match = None`) or `If-Match: ETAG`.
    async fn put(&self, rel: &str, body: Vec<u8>, if_match: Option<&str>) -> Result<Put, PolicyStoreError> {
        let key = self.key(rel);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        req = match if_match {
            None => req.if_none_match("*"),
            Some(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(_) => Ok(Put::Done),
            Err(e) if status(&e) == Some(412) => Ok(Put::PreconditionFailed),
            Err(e) => Err(self.s3_err("PutObject", &key, &e)),
        }
    }

    /// GET `rel`: `Ok(None)` when missing (404) or unchanged (304 on `if_none_match`).
    async fn get(&self, rel: &str, if_none_match: Option<&str>) -> Result<Option<(String, Vec<u8>)>, PolicyStoreError> {
        let key = self.key(rel);
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_if_none_match(if_none_match.map(str::to_string));
        match req.send().await {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_string();
                let bytes = out.body.collect().await.map_err(|e| PolicyStoreError::S3 {
                    bucket: self.bucket.clone(),
                    key: key.clone(),
                    op: "GetObject",
                    message: e.to_string(),
                })?;
                Ok(Some((etag, bytes.into_bytes().to_vec())))
            }
            Err(e) if matches!(status(&e), Some(304 | 404)) => Ok(None),
            Err(e) => Err(self.s3_err("GetObject", &key, &e)),
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, rel: &str, bytes: &[u8]) -> Result<T, PolicyStoreError> {
        serde_json::from_slice(bytes).map_err(|e| self.malformed(&self.key(rel), e.to_string()))
    }

    /// Keys under `rel_prefix`, relative to the store's prefix, ascending.
    async fn list(&self, rel_prefix: &str) -> Result<Vec<String>, PolicyStoreError> {
        let prefix = self.key(rel_prefix);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.s3_err("ListObjectsV2", &prefix, &e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key()).map(|k| k[self.prefix.len()..].to_string()));
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Create version 1 holding `model` and point at it.
    ///
    /// # Errors
    /// [`PolicyStoreError::AlreadyInitialised`] when a pointer, or a version 1 of another model, exists; S3 errors.
    pub async fn init(&self, model: ModelFile) -> Result<(), PolicyStoreError> {
        let v = PolicyVersion {
            format: VERSION_FORMAT.into(),
            version: 1,
            parent: None,
            folded: vec![],
            folded_visits: 0,
            model,
        };
        if let Put::PreconditionFailed = self.put(&version_key(1), to_json(&v), None).await? {
            // Left by an init that died before the pointer, or a store in use.
            if self.version(1).await?.model != v.model {
                return Err(PolicyStoreError::AlreadyInitialised {
                    bucket: self.bucket.clone(),
                    prefix: self.prefix.clone(),
                });
            }
        }
        let ptr = PolicyPointer::new(1, 1);
        match self.put("current", to_json(&ptr), None).await? {
            Put::Done => Ok(()),
            Put::PreconditionFailed => {
                Err(PolicyStoreError::AlreadyInitialised { bucket: self.bucket.clone(), prefix: self.prefix.clone() })
            }
        }
    }

    /// The pointer and its ETag.
    ///
    /// # Errors
    /// [`PolicyStoreError::NotInitialised`], S3 and format errors.
    pub async fn current(&self) -> Result<(String, PolicyPointer), PolicyStoreError> {
        let (etag, bytes) = self.get("current", None).await?.ok_or_else(|| self.not_initialised())?;
        Ok((etag, self.pointer(&bytes)?))
    }

    fn pointer(&self, bytes: &[u8]) -> Result<PolicyPointer, PolicyStoreError> {
        let p: PolicyPointer = self.parse("current", bytes)?;
        if p.format != POINTER_FORMAT {
            return Err(
                self.malformed(&self.key("current"), format!("format {:?} is not {POINTER_FORMAT:?}", p.format))
            );
        }
        Ok(p)
    }

    fn not_initialised(&self) -> PolicyStoreError {
        PolicyStoreError::NotInitialised { bucket: self.bucket.clone(), prefix: self.prefix.clone() }
    }

    /// Version `n`.
    ///
    /// # Errors
    /// [`PolicyStoreError::NoSuchVersion`], S3 and format errors.
    pub async fn version(&self, n: u64) -> Result<PolicyVersion, PolicyStoreError> {
        let rel = version_key(n);
        let (_, bytes) = self.get(&rel, None).await?.ok_or(PolicyStoreError::NoSuchVersion(n))?;
        let v: PolicyVersion = self.parse(&rel, &bytes)?;
        if v.format != VERSION_FORMAT || v.version != n {
            return Err(self.malformed(
                &self.key(&rel),
                format!("format {:?}, version {} (expected {VERSION_FORMAT:?}, {n})", v.format, v.version),
            ));
        }
        Ok(v)
    }

    /// The numbers of every version key, ascending (including versions
    /// never made current).
    ///
    /// # Errors
    /// S3 errors.
    pub async fn versions(&self) -> Result<Vec<u64>, PolicyStoreError> {
        let keys = self.list("versions/").await?;
        let mut ns: Vec<u64> =
            keys.iter().filter_map(|k| k.strip_prefix("versions/v")?.strip_suffix(".json")?.parse().ok()).collect();
        ns.sort_unstable();
        Ok(ns)
    }

    /// The current policy if the pointer's ETag differs from `etag`
    /// (`GET current` with `If-None-Match`, 304 = unchanged); `None` always fetches.
    ///
    /// # Errors
    /// [`PolicyStoreError::NotInitialised`], S3 and format errors.
    pub async fn fetch_if_changed(&self, etag: Option<&str>) -> Result<Fetched, PolicyStoreError> {
        let Some((new_etag, bytes)) = self.get("current", etag).await? else {
            return match etag {
                Some(_) => {
                    // 304, or 404 after a deletion: tell them apart.
                    self.current().await?;
                    Ok(Fetched::Unchanged)
                }
                None => Err(self.not_initialised()),
            };
        };
        let ptr = self.pointer(&bytes)?;
        let version = self.version(ptr.version).await?;
        Ok(Fetched::Changed { etag: new_etag, version: Box::new(version) })
    }

    /// Store `delta` under the next sequence number of this handle
    /// ([`PolicyStore::push_delta_as`]); returns its key.
    ///
    /// # Errors
    /// As [`PolicyStore::push_delta_as`].
    pub async fn push_delta(&self, delta: &PolicyDelta) -> Result<String, PolicyStoreError> {
        self.push_delta_as(delta, self.seq.fetch_add(1, Ordering::Relaxed)).await
    }

    /// The key of this handle's delta number `seq` of `replica` on
    /// `base_version`: `deltas/REPLICA/vBASE-INCARNATION-SEQ.json`.
    pub fn delta_key(&self, replica: &str, base_version: u64, seq: u64) -> String {
        format!("deltas/{replica}/v{base_version:06}-{:013}-{seq:06}.json", self.incarnation)
    }

    /// Store `delta` as the object [`PolicyStore::delta_key`]`(replica,
    /// base, seq)`, create-only; returns its key (relative to the prefix).
    /// The key is the same for the same `seq`, so a push retried after an
    /// unknown outcome (a timeout) cannot store the delta twice: a 412 on
    /// that key means our earlier try landed, and counts as success. Retry
    /// only with the same delta under the same `seq`.
    ///
    /// # Errors
    /// [`PolicyStoreError::BadDelta`] for a replica id unfit for a key; S3 errors.
    pub async fn push_delta_as(&self, delta: &PolicyDelta, seq: u64) -> Result<String, PolicyStoreError> {
        let r = &delta.replica;
        if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            let key = format!("deltas/{r}/");
            let source = MergeError::BadDelta { replica: r.clone(), message: "a replica id is [A-Za-z0-9._-]+".into() };
            return Err(PolicyStoreError::BadDelta { key, source });
        }
        let rel = self.delta_key(r, delta.base_version, seq);
        match self.put(&rel, to_json(delta), None).await? {
            Put::Done => {
                tracing::debug!(replica = %r, key = %rel, visits = delta.total_visits(), "policy delta pushed");
            }
            Put::PreconditionFailed => {
                tracing::info!(replica = %r, key = %rel, "policy delta already stored by an earlier try");
            }
        }
        Ok(rel)
    }

    /// Fold every pending delta into a new current version (see the module
    /// docs), trying at most `max_attempts` times against concurrent writers.
    ///
    /// # Errors
    /// [`PolicyStoreError::Contention`] when every try lost;
    /// [`PolicyStoreError::BadDelta`] for a delta that does not fit (nothing
    /// is folded, every delta stays); S3 and format errors.
    pub async fn merge(&self, max_attempts: u32) -> Result<Merged, PolicyStoreError> {
        for attempt in 1..=max_attempts.max(1) {
            let Some(plan) = self.plan_merge().await? else {
                let (_, ptr) = self.current().await?;
                return Ok(Merged::Nothing { version: ptr.version });
            };
            match self.commit_merge(&plan).await? {
                Some(version) => {
                    tracing::info!(
                        version,
                        parent = plan.base,
                        deltas = plan.folded.len(),
                        visits = plan.visits,
                        attempt,
                        "policy merged"
                    );
                    return Ok(Merged::Version {
                        version,
                        deltas: plan.folded.len(),
                        visits: plan.visits,
                        attempts: attempt,
                    });
                }
                None => {
                    tracing::debug!(attempt, base = plan.base, "policy merge lost the race for the pointer");
                    backoff(attempt).await;
                }
            }
        }
        Err(PolicyStoreError::Contention { attempts: max_attempts.max(1) })
    }

    /// The first half of [`PolicyStore::merge`]: read the pointer and its
    /// version, clean up the deltas that version folded, and fold the
    /// pending ones; writes nothing else. `None` when no delta is pending.
    ///
    /// # Errors
    /// As [`PolicyStore::merge`].
    pub async fn plan_merge(&self) -> Result<Option<MergePlan>, PolicyStoreError> {
        let (etag, ptr) = self.current().await?;
        let base = self.version(ptr.version).await?;
        for k in &base.folded {
            self.delete(k).await?;
        }
        let pending: Vec<String> =
            self.list("deltas/").await?.into_iter().filter(|k| !base.folded.contains(k)).collect();
        let mut deltas = Vec::with_capacity(pending.len());
        let mut folded = Vec::with_capacity(pending.len());
        for k in &pending {
            // Gone between list and get: folded by a concurrent merge that won; skip it.
            let Some((_, bytes)) = self.get(k, None).await? else { continue };
            let d: PolicyDelta = self.parse(k, &bytes)?;
            d.check(base.model.num_states).map_err(|source| PolicyStoreError::BadDelta { key: self.key(k), source })?;
            deltas.push(d);
            folded.push(k.clone());
        }
        if folded.is_empty() {
            return Ok(None);
        }
        let model = merge(&base.model, &deltas)
            .map_err(|source| PolicyStoreError::BadDelta { key: self.key("deltas/"), source })?;
        let visits = deltas.iter().map(PolicyDelta::total_visits).sum();
        Ok(Some(MergePlan { etag, base: ptr.version, generation: ptr.generation, folded, visits, model }))
    }

    /// The second half of [`PolicyStore::merge`]: write `plan` as the next
    /// free version number (create-only; a number taken meanwhile is skipped),
    /// then move the pointer to it if the pointer is still the one the plan
    /// read (`If-Match`). `Ok(None)` when the pointer moved: the version stays
    /// behind unreferenced and its deltas stay pending; plan again.
    ///
    /// # Errors
    /// S3 errors; [`PolicyStoreError::Contention`] after 20 version numbers taken in a row.
    pub async fn commit_merge(&self, plan: &MergePlan) -> Result<Option<u64>, PolicyStoreError> {
        let mut version = None;
        for _ in 0..20 {
            let next = self.versions().await?.last().copied().unwrap_or(0) + 1;
            let v = PolicyVersion {
                format: VERSION_FORMAT.into(),
                version: next,
                parent: Some(plan.base),
                folded: plan.folded.clone(),
                folded_visits: plan.visits,
                model: plan.model.clone(),
            };
            if let Put::Done = self.put(&version_key(next), to_json(&v), None).await? {
                version = Some(next);
                break;
            }
        }
        let version = version.ok_or(PolicyStoreError::Contention { attempts: 20 })?;
        let ptr = PolicyPointer::new(version, plan.generation + 1);
        if let Put::PreconditionFailed = self.put("current", to_json(&ptr), Some(&plan.etag)).await? {
            return Ok(None);
        }
        for k in &plan.folded {
            self.delete(k).await?;
        }
        Ok(Some(version))
    }

    async fn delete(&self, rel: &str) -> Result<(), PolicyStoreError> {
        let key = self.key(rel);
        match self.client.delete_object().bucket(&self.bucket).key(&key).send().await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.s3_err("DeleteObject", &key, &e)),
        }
    }

    /// Point sidecars at version `n` (rollout of a new version, or rollback
    /// to an old one); returns the version it replaced.
    ///
    /// # Errors
    /// [`PolicyStoreError::NoSuchVersion`]; [`PolicyStoreError::Contention`]
    /// after 10 lost races; S3 errors.
    pub async fn rollout(&self, n: u64) -> Result<u64, PolicyStoreError> {
        self.version(n).await?;
        for attempt in 1..=10 {
            let (etag, ptr) = self.current().await?;
            let new_ptr = PolicyPointer::new(n, ptr.generation + 1);
            if let Put::Done = self.put("current", to_json(&new_ptr), Some(&etag)).await? {
                tracing::info!(version = n, previous = ptr.version, "policy pointer moved");
                return Ok(ptr.version);
            }
            backoff(attempt).await;
        }
        Err(PolicyStoreError::Contention { attempts: 10 })
    }

    /// Publish `model` (trained elsewhere, e.g. `selfheal fleet merge` of a
    /// sharded training run) as the next version, its parent the current
    /// one, and make it current with `If-Match`; on a store without a
    /// pointer, [`PolicyStore::init`] it as version 1. Returns
    /// `(previous, new)` version numbers, `previous = None` after an init.
    /// Pending deltas stay pending: the next merge folds them onto the new
    /// version (and refuses them, [`PolicyStoreError::BadDelta`], if its
    /// state space differs).
    ///
    /// # Errors
    /// [`PolicyStoreError::Contention`] after `max_attempts` lost races;
    /// [`PolicyStoreError::AlreadyInitialised`] when a dead init left a
    /// version 1 of another model and no pointer; S3 and format errors.
    pub async fn publish(&self, model: ModelFile, max_attempts: u32) -> Result<(Option<u64>, u64), PolicyStoreError> {
        let attempts = max_attempts.max(1);
        for attempt in 1..=attempts {
            let (etag, ptr) = match self.current().await {
                Ok(c) => c,
                Err(PolicyStoreError::NotInitialised { .. }) => match self.init(model.clone()).await {
                    Ok(()) => return Ok((None, 1)),
                    // Another writer initialised it meanwhile: publish on top.
                    Err(e @ PolicyStoreError::AlreadyInitialised { .. }) if attempt == attempts => return Err(e),
                    Err(PolicyStoreError::AlreadyInitialised { .. }) => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            };
            let plan = MergePlan {
                etag,
                base: ptr.version,
                generation: ptr.generation,
                folded: vec![],
                visits: 0,
                model: model.clone(),
            };
            if let Some(version) = self.commit_merge(&plan).await? {
                tracing::info!(version, parent = ptr.version, attempt, "policy published");
                return Ok((Some(ptr.version), version));
            }
            backoff(attempt).await;
        }
        Err(PolicyStoreError::Contention { attempts })
    }

    /// Roll back to the parent of the current version; returns `(from, to)`.
    ///
    /// # Errors
    /// [`PolicyStoreError::NoSuchVersion`] when the current version has no parent; as [`PolicyStore::rollout`].
    pub async fn rollback(&self) -> Result<(u64, u64), PolicyStoreError> {
        let (_, ptr) = self.current().await?;
        let v = self.version(ptr.version).await?;
        let to = v.parent.ok_or(PolicyStoreError::NoSuchVersion(0))?;
        let from = self.rollout(to).await?;
        Ok((from, to))
    }
}

/// The HTTP status of a failed call, when it got a response.
fn status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    #[allow(clippy::expect_used)] // plain structs of numbers and strings: serde_json cannot fail on them.
    let mut s = serde_json::to_vec_pretty(v).expect("policy objects serialise");
    s.push(b'\n');
    s
}

/// Wait before another try: 20 ms × attempt, plus up to 20 ms of jitter
/// from the clock's nanoseconds (replicas that collided should not collide again).
async fn backoff(attempt: u32) {
    let jitter =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() % 20);
    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt) + u64::from(jitter))).await;
}
