//! The sidecar against a Glue world of its own (issue 14): a job that
//! publishes only Glue's own metrics, at a million records a minute on 4
//! G.1X workers, written from the AWS documentation and not from the
//! simulator (`aws_support::glue_world` says what it publishes and why).
//!
//! The README's "watch your Glue job" path, followed as a user would: fit
//! the detector on the job's last half hour (`selfheal fit`, a CloudWatch
//! backfill with the job's runs), validate, run in act mode. Then three
//! faults, one after the other: executors out of memory must be healed by a
//! run with more workers, a renamed source column by a schema remap, and a
//! two-minute burst of failed tasks must be left alone. Zero wrong actions:
//! nothing on a healthy job, no scaling on schema drift, no remap without
//! drift; the first action within 3 windows of onset.

mod aws_support;
mod common;

use aws_support::glue_world::*;
use selfheal_core::Action;

/// The windows from `from` on whose fault was `f`, and the first applied
/// action among them (index from onset, action).
fn first_action(w: &GlueWorld, from: usize) -> Option<(usize, Action)> {
    w.minutes[from..].iter().enumerate().find_map(|(i, m)| m.applied.first().map(|a| (i, *a)))
}

#[test]
fn a_glue_only_job_is_healed_by_the_right_action_and_left_alone_when_healthy() {
    // Seed 7 in CI; SELFHEAL_GLUE_WORLD_SEED tries others.
    let seed = std::env::var("SELFHEAL_GLUE_WORLD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut w = GlueWorld::new(seed);
    let fitted = w.fit_and_start();
    assert!(fitted.contains("glue.ALL.jvm.heap.usage"), "fit names the metrics it found:\n{fitted}");

    // Healthy: nothing to do.
    w.ticks(6);

    // Executors run out of memory.
    let oom_from = w.minutes.len();
    w.fault = Some(Fault::OutOfMemory);
    w.until_healed(8, 4);
    let (after, action) =
        first_action(&w, oom_from).unwrap_or_else(|| panic!("nothing healed the OOM\n{}", w.context()));
    assert_eq!(action, Action::ScaleUp, "out of memory is healed by more capacity\n{}", w.context());
    assert!(after < 3, "first action {after} windows after onset\n{}", w.context());
    assert_eq!(w.workers, 8, "the next run has the next level of the job's ladder (4 → 8)\n{}", w.context());

    // A burst of failed tasks that Spark retries through.
    let burst_from = w.minutes.len();
    w.fault = Some(Fault::Burst(2));
    w.ticks(7);
    assert_eq!(first_action(&w, burst_from), None, "a transient burst is left alone\n{}", w.context());

    // Upstream renames a column.
    let drift_from = w.minutes.len();
    w.start_drift();
    w.until_healed(8, 4);
    w.finish();
    let (after, action) =
        first_action(&w, drift_from).unwrap_or_else(|| panic!("nothing healed the drift\n{}", w.context()));
    assert_eq!(action, Action::SchemaRemap, "schema drift is healed by a remap\n{}", w.context());
    assert!(after < 3, "first action {after} windows after onset\n{}", w.context());
    assert_eq!(w.columns(TABLE), drifted_columns(), "the job's table has the source's columns");

    // Zero wrong actions over the whole run.
    // (`Minute::applied` is what ran after the sidecar decided that minute.)
    let wrong: Vec<_> = w
        .minutes
        .iter()
        .flat_map(|m| m.applied.iter().map(move |a| (m.window, m.fault, *a)))
        .filter(|(_, f, a)| {
            !matches!(
                (f, a),
                (Some(Fault::OutOfMemory), Action::ScaleUp) | (Some(Fault::SchemaDrift), Action::SchemaRemap)
            )
        })
        .collect();
    let applied: usize = w.minutes.iter().map(|m| m.applied.len()).sum();
    assert_eq!(applied, 2, "exactly two actions ran on Glue\n{}", w.context());
    assert!(wrong.is_empty(), "wrong actions: {wrong:?}\n{}", w.context());
    // Nothing asked of a person on a healthy job either: every proposal or
    // action is for a faulty minute, or the one after it (a run's failure
    // is known when the run ends).
    let asked: Vec<_> = w
        .decisions()
        .into_iter()
        .filter(|d| ["allowed", "proposed", "pending", "escalated"].contains(&d.2.as_str()))
        .filter(|d| w.fault_at(d.0).is_none() && w.fault_at(d.0.saturating_sub(1)).is_none())
        .collect();
    assert!(asked.is_empty(), "decisions on a healthy job: {asked:?}\n{}", w.context());
    // The burst: no action and no page (a proposal may wait for a person).
    let acted: Vec<_> = w
        .decisions()
        .into_iter()
        .filter(|d| {
            matches!(w.fault_at(d.0), Some(Fault::Burst(_))) && ["allowed", "escalated"].contains(&d.2.as_str())
        })
        .collect();
    assert!(acted.is_empty(), "acted on a transient burst: {acted:?}\n{}", w.context());
}
