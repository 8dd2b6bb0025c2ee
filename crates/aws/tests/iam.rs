//! The shipped IAM policy grants exactly the AWS calls the code makes.
//!
//! The calls are read from the source itself (every `.operation_name()` call
//! on an SDK client), so a new call without a policy update fails here.

use std::collections::BTreeSet;

fn pascal(snake: &str) -> String {
    snake.split('_').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect()
}

/// SDK operations called in `src`: `client.get_job_runs()` or `.client\n.get_job_runs()`.
fn calls_in(src: &str, ops: &[&str]) -> BTreeSet<String> {
    ops.iter().filter(|op| src.contains(&format!(".{op}()"))).map(|op| pascal(op)).collect()
}

#[test]
fn policy_matches_the_calls_in_the_code() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let glue_src = std::fs::read_to_string(format!("{dir}/glue.rs")).unwrap()
        + &std::fs::read_to_string(format!("{dir}/evidence.rs")).unwrap();
    let cw_src = std::fs::read_to_string(format!("{dir}/cloudwatch.rs")).unwrap();
    // Every operation of the two SDKs this crate could call.
    let glue_ops = [
        "batch_stop_job_run",
        "get_job",
        "get_job_run",
        "get_job_runs",
        "get_table",
        "get_table_versions",
        "start_job_run",
        "update_job",
        "update_table",
        "create_table",
        "delete_table",
        "create_job",
        "delete_job",
    ];
    let cw_ops = ["get_metric_data", "get_metric_statistics", "list_metrics", "put_metric_data", "describe_alarms"];
    let mut called: BTreeSet<String> =
        calls_in(&glue_src, &glue_ops).into_iter().map(|o| format!("glue:{o}")).collect();
    called.extend(calls_in(&cw_src, &cw_ops).into_iter().map(|o| format!("cloudwatch:{o}")));

    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/iam-policy.json")).unwrap(),
    )
    .unwrap();
    let mut granted = BTreeSet::new();
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        // The fleet's statements (DynamoDB lease table, S3 policy store; issue 18)
        // grant the calls of the fleet crate, not of this one.
        let fleet = st["Sid"].as_str().is_some_and(|s| s.starts_with("Fleet"));
        for a in st["Action"].as_array().unwrap() {
            assert!(!a.as_str().unwrap().contains('*'), "no wildcard actions: {a}");
            if fleet {
                let a = a.as_str().unwrap();
                assert!(a.starts_with("dynamodb:") || a.starts_with("s3:"), "a fleet statement grants {a}");
            } else {
                granted.insert(a.as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(granted, called, "iam-policy.json must grant exactly the calls in src/");
    let listed: BTreeSet<String> = selfheal_aws::glue::IAM_ACTIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, called, "IAM_ACTIONS must list exactly the calls in src/");
}
