//! The `[fleet]` section: run as one replica of several.
//!
//! Absent, the daemon is one process that acts for every pipeline it sees
//! (the behaviour before issue 18). Present, it acts only for the pipelines
//! whose lease it holds (see [`crate::fleet`]). The section is its own file
//! with its own [`FleetConfig::check`] so the rest of the configuration's
//! validation does not need to know about it.

use serde::{Deserialize, Serialize};

/// `[fleet]`: the replica, its lease store, and the shared policy store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// This replica's id, unique in the fleet (`[A-Za-z0-9._-]+`); unset =
    /// the `POD_NAME` environment variable, else `HOSTNAME`, else the host name.
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Where leases live.
    pub leases: LeaseBackend,
    /// A lease's lifetime in seconds (Kubernetes `leaseDurationSeconds`): a
    /// replica that dies is replaced after at most this long plus `renew_secs`.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: f64,
    /// How often the replica heartbeats, renews and takes leases, seconds
    /// (Kubernetes `retryPeriod`); less than `lease_secs - margin_secs`.
    #[serde(default = "default_renew_secs")]
    pub renew_secs: f64,
    /// Safety margin, seconds: an action starts only while its lease has more
    /// than this left, and an action still running when less than half of it
    /// is left is cancelled. Cover the longest action plus the clock skew
    /// between replicas.
    #[serde(default = "default_margin_secs")]
    pub margin_secs: f64,
    /// Pipelines to lease from the start; every pipeline the source
    /// delivers a window of is leased too. Default: none (only those seen).
    #[serde(default)]
    pub pipelines: Vec<String>,
    /// The shared policy in S3; unset = this replica's own Q table only.
    #[serde(default)]
    pub policy_store: Option<PolicyStoreConfig>,
}

fn default_lease_secs() -> f64 {
    15.0
}
fn default_renew_secs() -> f64 {
    5.0
}
fn default_margin_secs() -> f64 {
    5.0
}

/// `[fleet.leases]`: the lease store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LeaseBackend {
    /// A DynamoDB table (conditional `UpdateItem`; region, credentials and
    /// endpoint from `[aws]`). Key `pk` (S); see `selfheal_fleet::dynamo`.
    Dynamodb {
        /// Table name.
        table: String,
        /// Create the table at start when it does not exist (needs
        /// `dynamodb:CreateTable`; for tests and first runs).
        #[serde(default)]
        create_table: bool,
    },
    /// `coordination.k8s.io/v1` Lease objects (in-cluster service account
    /// or the kubeconfig).
    Kubernetes {
        /// Namespace of the Lease objects.
        namespace: String,
    },
}

/// `[fleet.policy_store]`: the shared, versioned policy in S3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyStoreConfig {
    /// Bucket.
    pub bucket: String,
    /// Key prefix (`selfheal/policy/`); empty = the bucket's root.
    #[serde(default)]
    pub prefix: String,
    /// How often to poll the `current` pointer (`If-None-Match`), seconds.
    #[serde(default = "default_poll_secs")]
    pub poll_secs: f64,
    /// How often to push this replica's online visit/Q deltas, seconds.
    #[serde(default = "default_push_secs")]
    pub push_deltas_secs: f64,
}

fn default_poll_secs() -> f64 {
    30.0
}
fn default_push_secs() -> f64 {
    300.0
}

impl FleetConfig {
    /// Every problem, each naming its key (`fleet.lease_secs: ...`). No network.
    pub fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut need = |ok: bool, key: &str, what: String| {
            if !ok {
                p.push(format!("fleet.{key}: {what}"));
            }
        };
        if let Some(id) = &self.replica_id {
            need(valid_id(id), "replica_id", format!("{id:?} must be [A-Za-z0-9._-]+ (it names S3 keys and leases)"));
        }
        let finite = |v: f64| v.is_finite() && v > 0.0;
        need(finite(self.lease_secs), "lease_secs", format!("must be > 0, got {}", self.lease_secs));
        need(finite(self.renew_secs), "renew_secs", format!("must be > 0, got {}", self.renew_secs));
        need(
            self.margin_secs.is_finite() && self.margin_secs >= 0.0,
            "margin_secs",
            format!("must be >= 0, got {}", self.margin_secs),
        );
        need(
            self.renew_secs + self.margin_secs < self.lease_secs,
            "renew_secs",
            format!(
                "renew_secs + margin_secs ({} + {}) must be less than lease_secs ({}): a holder must renew while \
                 it may still act",
                self.renew_secs, self.margin_secs, self.lease_secs
            ),
        );
        match &self.leases {
            LeaseBackend::Dynamodb { table, .. } => {
                need(!table.is_empty(), "leases.table", "must name a DynamoDB table".into())
            }
            LeaseBackend::Kubernetes { namespace } => {
                need(!namespace.is_empty(), "leases.namespace", "must name a namespace".into())
            }
        }
        need(self.pipelines.iter().all(|p| !p.is_empty()), "pipelines", "an empty pipeline name".into());
        if let Some(s) = &self.policy_store {
            need(!s.bucket.is_empty(), "policy_store.bucket", "must name a bucket".into());
            need(finite(s.poll_secs), "policy_store.poll_secs", format!("must be > 0, got {}", s.poll_secs));
            need(
                finite(s.push_deltas_secs),
                "policy_store.push_deltas_secs",
                format!("must be > 0, got {}", s.push_deltas_secs),
            );
        }
        p
    }

    /// The replica id: `replica_id`, else `POD_NAME`, else `HOSTNAME`, else
    /// the kernel's host name (`/proc/sys/kernel/hostname`), via `env`.
    ///
    /// # Errors
    /// A message when none is set or the one found is not `[A-Za-z0-9._-]+`.
    pub fn replica(&self, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
        let found = self
            .replica_id
            .clone()
            .or_else(|| env("POD_NAME"))
            .or_else(|| env("HOSTNAME"))
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or("fleet.replica_id is unset and neither POD_NAME nor HOSTNAME names this replica")?;
        if valid_id(&found) {
            Ok(found)
        } else {
            Err(format!("replica id {found:?} must be [A-Za-z0-9._-]+; set fleet.replica_id"))
        }
    }

    /// The lease duration.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.lease_secs)
    }

    /// The renewal period.
    pub fn renew(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.renew_secs)
    }

    /// The safety margin.
    pub fn margin(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.margin_secs)
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> FleetConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_check_clean_and_the_replica_id_falls_back_to_the_pod_name() {
        let c = parse("[leases]\nkind = \"dynamodb\"\ntable = \"leases\"\n");
        assert_eq!((c.lease_secs, c.renew_secs, c.margin_secs), (15.0, 5.0, 5.0));
        assert_eq!(c.check(), Vec::<String>::new());
        let env = |k: &str| (k == "POD_NAME").then(|| "selfheal-7d9f-x2".to_string());
        assert_eq!(c.replica(env).unwrap(), "selfheal-7d9f-x2");
        let c = FleetConfig { replica_id: Some("r1".into()), ..c };
        assert_eq!(c.replica(env).unwrap(), "r1", "the key wins over the environment");
    }

    #[test]
    fn every_bad_value_is_named_by_its_key() {
        let c = parse(
            "replica_id = \"a b\"\nlease_secs = 2\nrenew_secs = 1\nmargin_secs = 1.5\npipelines = [\"\"]\n\
             [leases]\nkind = \"kubernetes\"\nnamespace = \"\"\n\
             [policy_store]\nbucket = \"\"\npoll_secs = 0\npush_deltas_secs = -1\n",
        );
        let p = c.check();
        for key in [
            "fleet.replica_id",
            "fleet.renew_secs",
            "fleet.leases.namespace",
            "fleet.pipelines",
            "fleet.policy_store.bucket",
            "fleet.policy_store.poll_secs",
            "fleet.policy_store.push_deltas_secs",
        ] {
            assert!(p.iter().any(|l| l.starts_with(key)), "{key} not reported in {p:?}");
        }
        assert_eq!(p.len(), 7, "{p:?}");
        assert!(toml::from_str::<FleetConfig>("[leases]\nkind = \"etcd\"\n").is_err());
        assert!(toml::from_str::<FleetConfig>("lease_sec = 3\n[leases]\nkind = \"kubernetes\"\nnamespace = \"n\"\n")
            .is_err());
    }

    #[test]
    fn the_commented_example_parses_and_checks_clean() {
        let text = crate::config::EXAMPLE;
        let start = text.find("# [fleet]\n").expect("a [fleet] example in sidecar.example.toml");
        let block: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.split_once(" = ").is_some())
            .map(|l| l.split("  #").next().unwrap_or(l).trim_end().to_string() + "\n")
            .collect();
        let cfg = crate::config::SidecarConfig::from_toml_str(&block, "the [fleet] example")
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
        let f = cfg.fleet.expect("a [fleet] table");
        assert_eq!(f.replica_id.as_deref(), Some("selfheal-0"));
        assert_eq!(f.leases, LeaseBackend::Dynamodb { table: "selfheal-leases".into(), create_table: false });
        assert_eq!(f.policy_store.map(|p| p.bucket), Some("selfheal-policies".into()));
    }
}
