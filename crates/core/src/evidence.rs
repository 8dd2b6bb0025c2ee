//! Evidence that is not a metric: how a Glue job run ended, and why.
//!
//! A run's final state and error message are the most direct evidence there
//! is ("Container killed by YARN for exceeding memory limits" needs no anomaly
//! detector). They reach the product two ways, `GetJobRuns` and the
//! EventBridge "Glue Job State Change" event
//! (<https://docs.aws.amazon.com/glue/latest/dg/automating-awsglue-with-cloudwatch-events.html>:
//! `detail.state` is one of `SUCCEEDED`, `FAILED`, `TIMEOUT`, `STOPPED`,
//! `ERROR`, with `detail.jobName`, `detail.jobRunId` and `detail.message`).
//! Both are turned into counts of the period's window ([`Metric::RunsFailed`]
//! and one count per class below), so the detector, the diagnosis and the
//! provenance log read them like any other telemetry.
//!
//! The classes are the fault vocabulary's, matched on the messages Glue and
//! Spark actually write (from AWS's troubleshooting pages: "Troubleshooting
//! AWS Glue" and "Debugging OOM exceptions and job abnormalities").

use crate::Metric;

/// The count metrics a job run's end feeds: [`Metric::RunsFailed`] and one
/// per class of [`RunFailure`].
pub const RUN_METRICS: [Metric; 6] = [
    Metric::RunsFailed,
    Metric::RunsFailedOom,
    Metric::RunsFailedSchema,
    Metric::RunsFailedConnection,
    Metric::RunsFailedThrottling,
    Metric::RunsFailedAccess,
];

/// Why a job run failed, in the fault vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunFailure {
    /// The driver or an executor ran out of memory.
    OutOfMemory,
    /// The data does not match the schema the job reads.
    SchemaMismatch,
    /// A source or sink could not be reached, or a call to it timed out.
    Connection,
    /// A service throttled the job.
    Throttling,
    /// IAM or a resource policy refused an operation.
    AccessDenied,
    /// Anything else.
    Other,
}

/// Substrings (lower case) per class, checked in this order.
const PATTERNS: [(RunFailure, &[&str]); 5] = [
    (
        RunFailure::OutOfMemory,
        &[
            "outofmemoryerror",
            "out of memory",
            "exceeding memory limits",
            "java heap space",
            "gc overhead limit exceeded",
            "exit code 137",
        ],
    ),
    (
        RunFailure::AccessDenied,
        &["accessdenied", "access denied", "not authorized to perform", "is not authorized", "forbidden"],
    ),
    (
        RunFailure::Throttling,
        &["rate exceeded", "throttlingexception", "throttled", "slowdown", "slow down", "reduce your request rate"],
    ),
    (
        RunFailure::SchemaMismatch,
        &[
            "cannot resolve",
            "schema mismatch",
            "does not exist in schema",
            "unable to infer schema",
            "incompatible schema",
            "found duplicate column",
            "cannot cast",
        ],
    ),
    (
        RunFailure::Connection,
        &[
            "connection refused",
            "connection reset",
            "communications link failure",
            "unknownhostexception",
            "sockettimeoutexception",
            "timed out",
            "timeout",
            "could not connect",
        ],
    ),
];

impl RunFailure {
    /// Classify a run's error message (case-insensitive substrings).
    pub fn classify(message: &str) -> RunFailure {
        let m = message.to_ascii_lowercase();
        PATTERNS.iter().find(|(_, pats)| pats.iter().any(|p| m.contains(p))).map_or(RunFailure::Other, |(c, _)| *c)
    }

    /// The count metric of this class (none for [`RunFailure::Other`]).
    pub fn metric(self) -> Option<Metric> {
        match self {
            RunFailure::OutOfMemory => Some(Metric::RunsFailedOom),
            RunFailure::SchemaMismatch => Some(Metric::RunsFailedSchema),
            RunFailure::Connection => Some(Metric::RunsFailedConnection),
            RunFailure::Throttling => Some(Metric::RunsFailedThrottling),
            RunFailure::AccessDenied => Some(Metric::RunsFailedAccess),
            RunFailure::Other => None,
        }
    }

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            RunFailure::OutOfMemory => "out_of_memory",
            RunFailure::SchemaMismatch => "schema_mismatch",
            RunFailure::Connection => "connection",
            RunFailure::Throttling => "throttling",
            RunFailure::AccessDenied => "access_denied",
            RunFailure::Other => "other",
        }
    }
}

/// The counts one ended run adds to its period's window: nothing for a run
/// that `SUCCEEDED` or was `STOPPED` (by a person or an action), else
/// [`Metric::RunsFailed`] and the class's count (Glue's own `glue.error.*`
/// metrics are left to Glue: an event must not overwrite or double them).
/// A `TIMEOUT` is the job's own run-time limit (a stuck or under-sized run),
/// counted as failed with no class whatever the message. Unknown states are
/// an error naming them.
pub fn run_ended(state: &str, message: &str) -> Result<Vec<(Metric, f64)>, String> {
    let class = match state {
        "SUCCEEDED" | "STOPPED" | "STOPPING" | "RUNNING" | "STARTING" | "WAITING" => return Ok(Vec::new()),
        "TIMEOUT" => RunFailure::Other,
        "FAILED" | "ERROR" => RunFailure::classify(message),
        other => {
            return Err(format!(
                "unknown job run state {other:?}; Glue's are SUCCEEDED, FAILED, TIMEOUT, STOPPED, ERROR \
                 (and STARTING, RUNNING, STOPPING, WAITING while a run lives)"
            ))
        }
    };
    let mut out = vec![(Metric::RunsFailed, 1.0)];
    out.extend(class.metric().map(|m| (m, 1.0)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_messages_land_in_their_class() {
        let cases = [
            (
                "Container killed by YARN for exceeding memory limits. 5.5 GB of 5.5 GB physical memory used.",
                RunFailure::OutOfMemory,
            ),
            (
                "An error occurred while calling o123.pyWriteDynamicFrame. java.lang.OutOfMemoryError: Java heap space",
                RunFailure::OutOfMemory,
            ),
            (
                "AnalysisException: cannot resolve '`customer_id`' given input columns: [cust_id, name]",
                RunFailure::SchemaMismatch,
            ),
            (
                "Communications link failure: The last packet sent successfully to the server was 0 ms ago.",
                RunFailure::Connection,
            ),
            (
                "User: arn:aws:sts::123:assumed-role/glue is not authorized to perform: s3:GetObject",
                RunFailure::AccessDenied,
            ),
            (
                "An error occurred (ThrottlingException) when calling the GetTable operation: Rate exceeded",
                RunFailure::Throttling,
            ),
            ("SystemExit: 1", RunFailure::Other),
        ];
        for (msg, want) in cases {
            assert_eq!(RunFailure::classify(msg), want, "{msg}");
        }
    }

    #[test]
    fn ended_runs_become_counts() {
        assert!(run_ended("SUCCEEDED", "").unwrap().is_empty());
        let oom = run_ended("FAILED", "Container killed by YARN for exceeding memory limits").unwrap();
        assert_eq!(oom, vec![(Metric::RunsFailed, 1.0), (Metric::RunsFailedOom, 1.0)], "no glue.error.* from an event");
        assert_eq!(run_ended("TIMEOUT", "Read timed out").unwrap(), vec![(Metric::RunsFailed, 1.0)], "no class");
        assert_eq!(run_ended("ERROR", "SystemExit: 1").unwrap(), vec![(Metric::RunsFailed, 1.0)]);
        assert!(run_ended("EXPLODED", "").unwrap_err().contains("EXPLODED"));
    }
}
