//! The baseline a Glue user would pick instead of an agent: what AWS Glue's own
//! job settings do, switched on and set the way a careful team sets them.
//!
//! Four settings, with their documented semantics:
//!
//! - **`MaxRetries`**: "the maximum number of times to retry this job after a
//!   JobRun fails" (Job structure,
//!   <https://docs.aws.amazon.com/glue/latest/dg/aws-glue-api-jobs-job.html>).
//!   Glue starts a new run of the job after the failed one ended: that is
//!   `StartJobRun` again, the simulator's [`Action::RetryWithBackoff`] (a new run
//!   after the failed one; [`Action::Restart`] is `BatchStopJobRun` +
//!   `StartJobRun`, for a run that is still going, and stalls the step's
//!   processing in the simulator, `simulator/src/model.rs` `FlowModifier::Stall`).
//!   A failed run is a window in which the job reported errors
//!   (`glue.error.ALL` > 0, the telemetry's stand-in for a `FAILED` job-run
//!   state). At most `max_retries` retries follow one another; the budget is
//!   spent when that many retries failed in a row and is restored only by a run
//!   that succeeds (a window without job errors whose run finished within its
//!   period). A pipeline triggered every period has no other notion of "the same
//!   run" than this chain of attempts.
//! - **`Timeout`**: "the JobRun timeout in minutes. This is the maximum time that
//!   a job run can consume resources before it is terminated and enters TIMEOUT
//!   status"; default 2,880 minutes, at most 10,080
//!   (<https://docs.aws.amazon.com/glue/latest/webapi/API_Action.html>,
//!   job-run statuses <https://docs.aws.amazon.com/glue/latest/dg/job-run-statuses.html>).
//!   A run's age is `glue.driver.aggregate.elapsedTime` (the run's elapsed time,
//!   milliseconds), bounded by the time since this policy last restarted it
//!   (the simulator's metric counts from the hang's onset). A run past the
//!   timeout is stopped and a new run started: [`Action::Restart`]. The timed-out
//!   run counts as a failed attempt against `max_retries`; the simulator has no
//!   "stop only" action, and the pipeline's trigger starts the next run anyway,
//!   so a timed-out run is stopped (`Restart`) even when the retry budget is
//!   spent.
//! - **`NotificationProperty.NotifyDelayAfter`**: "after a job run starts, the
//!   number of minutes to wait before sending a job run delay notification"
//!   (same Job structure page). For a pipeline triggered every period the run
//!   that should deliver the data is late as long as the data is not delivered
//!   on time: a failed run, a run overrunning its period, or the freshness SLO
//!   missed. After `notify_delay_after_minutes` of lateness the notification
//!   pages a person, [`Action::Escalate`]. Glue notifies every run that is
//!   late, not once per outage, so a late stretch on a pipeline triggered every
//!   period sends a stream of notifications; the team's routing (SNS → pager)
//!   groups them into one page per `notify_delay_after_minutes` of continued
//!   lateness. The count starts again with the first on-time window. (Once per
//!   stretch only would leave a second fault that arrives while the first one's
//!   backlog drains unreported for the rest of the stretch.)
//! - **Auto Scaling** (Glue 3.0+, `--enable-auto-scaling`): "AWS Glue
//!   automatically adds and removes workers from the cluster depending on the
//!   parallelism at each stage or microbatch of the job run"; "when more
//!   executors are requested by your Spark application, more workers will be
//!   added"; "when the executor has been idle without active computation tasks,
//!   the executor and the corresponding worker will be removed"; the job's
//!   `NumberOfWorkers` is the maximum
//!   (<https://docs.aws.amazon.com/glue/latest/dg/auto-scaling.html>). Spark's
//!   dynamic allocation requests executors once tasks have been pending for
//!   `spark.dynamicAllocation.schedulerBacklogTimeout` (1 s) and releases an
//!   executor idle for `executorIdleTimeout` (60 s)
//!   (<https://spark.apache.org/docs/latest/configuration.html#dynamic-allocation>).
//!   In telemetry: work is pending when records wait in the backlog while the
//!   job is reading (tasks run, more are queued): [`Action::ScaleUp`]; executors
//!   idle a whole window when nothing waits and the executors' CPU load is
//!   below `scale_in_cpu_load`: [`Action::ScaleDown`]. Scaling never moves to
//!   a worker level outside `[min_workers, max_workers]`. A hung job or a job failing before it reads
//!   requests no executors, so it is not scaled.
//!
//! One action per window, in this order: timeout → retry → notify → scale →
//! wait. One window is one CloudWatch period (`step_seconds` of the scenario).
//!
//! The policy reads telemetry only, like every policy here; against a real job
//! the `FAILED`/`TIMEOUT` run states themselves (`GetJobRuns`, the "Glue Job
//! State Change" events) are the direct evidence, and `glue.error.ALL` exists
//! only with `--enable-observability-metrics` (Glue 4.0+). `evaluate`,
//! `simulate --policy glue-builtins` and `report` run it as a policy; the
//! sidecar logs its choice beside the rules' as `glue_shadow`.

use selfheal_core::{Action, Metric, Observation, Policy, Slo, Telemetry};
use serde::{Deserialize, Serialize};

/// Glue's documented upper bound on a job timeout, minutes (7 days).
pub const MAX_TIMEOUT_MINUTES: u32 = 10_080;
/// Glue's default job timeout, minutes (48 hours), when none is set.
pub const DEFAULT_TIMEOUT_MINUTES: u32 = 2_880;

/// The job settings, as `models/glue-builtins.json` holds them. Field names
/// follow the Glue API (`MaxRetries`, `Timeout`, `NotifyDelayAfter`,
/// `NumberOfWorkers` as the auto-scaling maximum).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueSettings {
    /// `MaxRetries`: new runs started after a failed one, at most, in a row.
    /// Glue's default is 0.
    pub max_retries: u32,
    /// `Timeout`, minutes: a run older than this is stopped (TIMEOUT). Glue's
    /// default is [`DEFAULT_TIMEOUT_MINUTES`]; at most [`MAX_TIMEOUT_MINUTES`].
    pub timeout_minutes: u32,
    /// `NotificationProperty.NotifyDelayAfter`, minutes (at least 1): a late
    /// run is notified (paged) after this long. `None` (JSON `null`): no
    /// notification, Glue's default.
    pub notify_delay_after_minutes: Option<u32>,
    /// `--enable-auto-scaling` (Glue 3.0+). Off: the worker count never changes.
    pub auto_scaling: bool,
    /// Fewest workers auto scaling scales in to.
    pub min_workers: u32,
    /// `NumberOfWorkers` with auto scaling: the most workers a run may get.
    pub max_workers: u32,
    /// Executors' CPU load (`glue.ALL.system.cpuSystemLoad`, 0..1) below which,
    /// with nothing waiting, executors count as idle for the window and one
    /// step of workers is removed. An emulation constant, not a Glue setting
    /// (Glue scales from Spark's task counts, which CloudWatch does not carry).
    pub scale_in_cpu_load: f64,
}

/// Settings that cannot describe a Glue job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GlueSettingsError {
    /// `timeout_minutes` out of 1..=10,080.
    #[error("timeout_minutes {0} is out of Glue's range 1..=10080 (7 days)")]
    Timeout(u32),
    /// `notify_delay_after_minutes` below 1.
    #[error("notify_delay_after_minutes must be at least 1 (Glue's minimum)")]
    NotifyDelay,
    /// Worker bounds reversed or zero.
    #[error("worker bounds {min}..={max}: need 1 <= min_workers <= max_workers")]
    Workers {
        /// `min_workers`.
        min: u32,
        /// `max_workers`.
        max: u32,
    },
    /// `scale_in_cpu_load` outside (0, 1).
    #[error("scale_in_cpu_load {0} must be in (0, 1)")]
    ScaleIn(f64),
    /// `step_seconds` is zero.
    #[error("the pipeline's step must last at least one second")]
    Step,
}

impl GlueSettings {
    /// Check the settings against Glue's documented ranges.
    pub fn check(&self) -> Result<(), GlueSettingsError> {
        if !(1..=MAX_TIMEOUT_MINUTES).contains(&self.timeout_minutes) {
            return Err(GlueSettingsError::Timeout(self.timeout_minutes));
        }
        if self.notify_delay_after_minutes == Some(0) {
            return Err(GlueSettingsError::NotifyDelay);
        }
        if self.min_workers == 0 || self.min_workers > self.max_workers {
            return Err(GlueSettingsError::Workers { min: self.min_workers, max: self.max_workers });
        }
        if !(self.scale_in_cpu_load > 0.0 && self.scale_in_cpu_load < 1.0) {
            return Err(GlueSettingsError::ScaleIn(self.scale_in_cpu_load));
        }
        Ok(())
    }
}

/// The pipeline the job runs in: its worker levels (workers per level, low to
/// high, as the scenario's `pipeline.workers`) and the CloudWatch period.
#[derive(Clone, Debug, PartialEq)]
pub struct JobShape {
    /// Workers at each level the actuator can scale between.
    pub worker_levels: Vec<u32>,
    /// Seconds per window (the scenario's `pipeline.step_seconds`).
    pub step_seconds: u32,
}

/// Glue's built-ins as a policy over telemetry windows. See the module docs.
#[derive(Clone, Debug)]
pub struct GlueBuiltinsPolicy {
    s: GlueSettings,
    levels: Vec<u32>,
    step_ms: f64,
    slo: Slo,
    /// Failed attempts in a row (retries spent in the current chain).
    retries: u32,
    /// Windows since this policy last stopped and restarted the run.
    since_restart: Option<u32>,
    /// Late windows since the stretch began or the last page.
    late_windows: u32,
}

impl GlueBuiltinsPolicy {
    /// The policy for a job with `settings` in a pipeline of `shape`.
    pub fn new(settings: GlueSettings, shape: &JobShape) -> Result<GlueBuiltinsPolicy, GlueSettingsError> {
        settings.check()?;
        if shape.step_seconds == 0 {
            return Err(GlueSettingsError::Step);
        }
        Ok(GlueBuiltinsPolicy {
            s: settings,
            levels: shape.worker_levels.clone(),
            step_ms: 1000.0 * f64::from(shape.step_seconds),
            slo: Slo::default(),
            retries: 0,
            since_restart: None,
            late_windows: 0,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &GlueSettings {
        &self.s
    }

    /// Whether auto scaling can reach any worker level of the pipeline: false
    /// when every level lies outside `[min_workers, max_workers]`, and then
    /// the job is never scaled (it runs at the pipeline's own level).
    pub fn can_scale(&self) -> bool {
        self.s.auto_scaling && self.levels.iter().any(|w| (self.s.min_workers..=self.s.max_workers).contains(w))
    }

    /// The level whose worker count is nearest the executors reported.
    fn level(&self, executors: f64) -> usize {
        (0..self.levels.len())
            .min_by(|a, b| {
                let d = |i: &usize| (f64::from(self.levels[*i]) - executors).abs();
                d(a).total_cmp(&d(b))
            })
            .unwrap_or(0)
    }

    /// Age of the current run, milliseconds.
    fn run_age_ms(&self, t: &Telemetry) -> f64 {
        let elapsed = t.get(Metric::ElapsedTime);
        match self.since_restart {
            Some(w) => elapsed.min(f64::from(w) * self.step_ms),
            None => elapsed,
        }
    }

    fn decide(&mut self, t: &Telemetry, obs: &Observation<'_>) -> Action {
        if let Some(w) = &mut self.since_restart {
            *w += 1;
        }
        // The mask is the evaluation encoder's view (it forbids a second page
        // in what it sees as one incident); Glue's settings do not read it, so
        // only scaling, which it bounds by the worker levels, consults it.
        let allowed = |a: Action| obs.mask.allows(a);
        let age_ms = self.run_age_ms(t);
        let overrunning = age_ms > self.step_ms;
        let failed = t.get(Metric::ErrorsAll) > 0.0;
        let late = failed || overrunning || !self.slo.met(t);
        if late {
            self.late_windows += 1;
        } else {
            self.late_windows = 0;
        }
        if !failed && !overrunning {
            // A run succeeded: the next failure starts a new chain of attempts.
            self.retries = 0;
        }
        // Timeout: stop the run (and start the next one).
        if age_ms >= f64::from(self.s.timeout_minutes) * 60_000.0 {
            self.retries = self.retries.saturating_add(1);
            self.since_restart = Some(0);
            return Action::Restart;
        }
        // MaxRetries: a failed run is started again while the budget lasts.
        if failed && self.retries < self.s.max_retries {
            self.retries += 1;
            return Action::RetryWithBackoff;
        }
        // NotifyDelayAfter: a page per `n` minutes of lateness.
        if let Some(n) = self.s.notify_delay_after_minutes {
            let late_ms = f64::from(self.late_windows) * self.step_ms;
            if late_ms >= f64::from(n) * 60_000.0 {
                self.late_windows = 0;
                return Action::Escalate;
            }
        }
        if self.s.auto_scaling {
            if let Some(a) = self.scale(t) {
                if allowed(a) {
                    return a;
                }
            }
        }
        Action::NoOp
    }

    /// Auto scaling's move this window, if any, within the worker bounds.
    fn scale(&self, t: &Telemetry) -> Option<Action> {
        let level = self.level(t.get(Metric::Executors));
        let within =
            |i: usize| self.levels.get(i).is_some_and(|w| (self.s.min_workers..=self.s.max_workers).contains(w));
        let pending = t.get(Metric::Backlog) > 0.0;
        let reading = t.get(Metric::RecordsRead) > 0.0;
        if pending && reading {
            return within(level + 1).then_some(Action::ScaleUp);
        }
        let idle = !pending && t.get(Metric::CpuLoad) < self.s.scale_in_cpu_load;
        if idle && level > 0 {
            return within(level - 1).then_some(Action::ScaleDown);
        }
        None
    }
}

impl Policy for GlueBuiltinsPolicy {
    fn name(&self) -> &str {
        "glue-builtins"
    }

    fn reset(&mut self, _seed: u64) {
        self.retries = 0;
        self.since_restart = None;
        self.late_windows = 0;
    }

    fn act(&mut self, obs: &Observation<'_>) -> Action {
        self.decide(obs.telemetry, obs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::ActionMask;

    fn settings() -> GlueSettings {
        GlueSettings {
            max_retries: 3,
            timeout_minutes: 10,
            notify_delay_after_minutes: Some(15),
            auto_scaling: true,
            min_workers: 5,
            max_workers: 20,
            scale_in_cpu_load: 0.4,
        }
    }

    fn shape() -> JobShape {
        JobShape { worker_levels: vec![5, 10, 20, 40], step_seconds: 60 }
    }

    fn policy(s: GlueSettings) -> GlueBuiltinsPolicy {
        GlueBuiltinsPolicy::new(s, &shape()).unwrap()
    }

    /// A healthy window at 10 workers: everything read and delivered.
    fn healthy() -> Telemetry {
        crate::baselines::tests::window()
    }

    /// A failed run: the job errored, nothing was read, records wait.
    fn failed() -> Telemetry {
        let mut t = healthy();
        t.set(Metric::ErrorsAll, 1.0);
        t.set(Metric::Errors5xx, 500.0);
        t.set(Metric::RecordsRead, 0.0);
        t.set(Metric::RecordsDelivered, 0.0);
        t.set(Metric::Backlog, 1000.0);
        t.set(Metric::LatencyP95, 90.0);
        t
    }

    /// A hung run `minutes` old: nothing read, elapsed time growing.
    fn hung(minutes: u32) -> Telemetry {
        let mut t = healthy();
        t.set(Metric::RecordsRead, 0.0);
        t.set(Metric::RecordsDelivered, 0.0);
        t.set(Metric::CpuLoad, 0.04);
        t.set(Metric::ElapsedTime, f64::from(minutes) * 60_000.0);
        t.set(Metric::Backlog, 1000.0 * f64::from(minutes));
        t.set(Metric::LatencyP95, 60.0 + 60.0 * f64::from(minutes));
        t
    }

    fn act(p: &mut GlueBuiltinsPolicy, t: &Telemetry) -> Action {
        p.act(&Observation { telemetry: t, state: 0, mask: ActionMask::ALL, anomalous: false })
    }

    #[test]
    fn a_failed_run_is_retried_at_most_max_retries_times() {
        for max in [0, 1, 3] {
            let mut p = policy(GlueSettings { max_retries: max, notify_delay_after_minutes: None, ..settings() });
            let actions: Vec<_> = (0..30).map(|_| act(&mut p, &failed())).collect();
            let retries = actions.iter().filter(|a| **a == Action::RetryWithBackoff).count();
            assert_eq!(retries, max as usize, "max_retries {max}: {actions:?}");
            // The retries come first, one per failed run, then Glue gives up.
            assert!(actions[..max as usize].iter().all(|a| *a == Action::RetryWithBackoff));
            assert!(actions[max as usize..].iter().all(|a| *a != Action::RetryWithBackoff));
            assert!(!actions.contains(&Action::Restart), "a failed run is not stopped");
        }
    }

    #[test]
    fn a_successful_run_restores_the_retry_budget() {
        let mut p = policy(GlueSettings { max_retries: 2, notify_delay_after_minutes: None, ..settings() });
        let mut retries = 0;
        for _ in 0..3 {
            for _ in 0..5 {
                retries += usize::from(act(&mut p, &failed()) == Action::RetryWithBackoff);
            }
            act(&mut p, &healthy());
        }
        assert_eq!(retries, 3 * 2);
    }

    #[test]
    fn a_run_past_the_timeout_is_stopped_and_counts_as_a_failed_attempt() {
        let mut p = policy(GlueSettings { max_retries: 1, notify_delay_after_minutes: None, ..settings() });
        for m in 1..10 {
            assert_ne!(act(&mut p, &hung(m)), Action::Restart, "{m} minutes is within the 10-minute timeout");
        }
        assert_eq!(act(&mut p, &hung(10)), Action::Restart, "stopped at the timeout");
        // The simulator's elapsed time keeps counting from the hang, but the new
        // run is young: it is stopped again only ten minutes after the restart.
        let later: Vec<_> = (11..21).map(|m| act(&mut p, &hung(m))).collect();
        assert_eq!(later.iter().filter(|a| **a == Action::Restart).count(), 1, "{later:?}");
        assert_eq!(later[9], Action::Restart);
        // The timeout spent the one retry: a failed run right after is not retried.
        assert_ne!(act(&mut p, &failed()), Action::RetryWithBackoff);
        // Timeout from the scenario's period: 2-minute windows reach 10 minutes in 5.
        let mut p = GlueBuiltinsPolicy::new(
            GlueSettings { notify_delay_after_minutes: None, ..settings() },
            &JobShape { step_seconds: 120, ..shape() },
        )
        .unwrap();
        let mut t = hung(1);
        let mut first = None;
        for w in 1..=10u32 {
            t.set(Metric::ElapsedTime, f64::from(w) * 120_000.0);
            if act(&mut p, &t) == Action::Restart {
                first = Some(w);
                break;
            }
        }
        assert_eq!(first, Some(5));
    }

    #[test]
    fn scaling_follows_load_and_stays_within_the_bounds() {
        let mut p = policy(settings());
        // Pending records while the job reads: scale out, up to max_workers.
        let mut t = healthy();
        t.set(Metric::Backlog, 3000.0);
        assert_eq!(act(&mut p, &t), Action::ScaleUp);
        t.set(Metric::Executors, 20.0);
        assert_eq!(act(&mut p, &t), Action::NoOp, "20 is max_workers; 40 is out of bounds");
        // Nothing waiting and idle executors: scale in, down to min_workers.
        let mut t = healthy();
        t.set(Metric::Executors, 20.0);
        t.set(Metric::CpuLoad, 0.35);
        assert_eq!(act(&mut p, &t), Action::ScaleDown);
        t.set(Metric::Executors, 10.0);
        assert_eq!(act(&mut p, &t), Action::ScaleDown);
        t.set(Metric::Executors, 5.0);
        assert_eq!(act(&mut p, &t), Action::NoOp, "5 is min_workers");
        // Busy executors with nothing waiting: keep them.
        assert_eq!(act(&mut p, &healthy()), Action::NoOp);
        // A hung run requests no executors: no scaling into a hang.
        let mut p = policy(GlueSettings { timeout_minutes: 60, notify_delay_after_minutes: None, ..settings() });
        assert_eq!(act(&mut p, &hung(3)), Action::NoOp);
        // Auto scaling off: never scales.
        let mut p = policy(GlueSettings { auto_scaling: false, ..settings() });
        let mut t = healthy();
        t.set(Metric::Backlog, 3000.0);
        assert_eq!(act(&mut p, &t), Action::NoOp);
        // Bounds between two levels: no level to move to, never scaled.
        let mut p = policy(GlueSettings { min_workers: 11, max_workers: 19, ..settings() });
        assert!(!p.can_scale());
        assert_eq!(act(&mut p, &t), Action::NoOp);
        // Higher bounds let it go further.
        let mut p = policy(GlueSettings { max_workers: 40, ..settings() });
        t.set(Metric::Executors, 20.0);
        assert_eq!(act(&mut p, &t), Action::ScaleUp);
    }

    #[test]
    fn a_late_run_is_notified_after_the_delay_and_again_while_it_stays_late() {
        let mut p = policy(GlueSettings { max_retries: 0, ..settings() });
        let mut late = failed();
        late.set(Metric::Backlog, 0.0);
        let pages = |p: &mut GlueBuiltinsPolicy, n: usize| -> Vec<usize> {
            (0..n).filter(|_| act(p, &late) == Action::Escalate).collect()
        };
        assert_eq!(pages(&mut p, 40), [14, 29], "after 15 late minutes, then every 15 while late");
        // An on-time window ends the stretch; ten late minutes are not enough.
        act(&mut p, &healthy());
        assert_eq!(pages(&mut p, 10), Vec::<usize>::new());
        act(&mut p, &healthy());
        assert_eq!(pages(&mut p, 15), [14]);
        // Late data with runs that succeed (a slow, skewed stage): notified too.
        let mut slow = healthy();
        slow.set(Metric::LatencyP95, 600.0);
        let mut p = policy(settings());
        let n = (0..15).filter(|_| act(&mut p, &slow) == Action::Escalate).count();
        assert_eq!(n, 1);
        let mut p = policy(GlueSettings { notify_delay_after_minutes: None, max_retries: 0, ..settings() });
        assert!((0..100).all(|_| act(&mut p, &late) != Action::Escalate), "no NotifyDelayAfter, no page");
    }

    #[test]
    fn settings_outside_glue_ranges_are_refused() {
        let bad = |s: GlueSettings| GlueBuiltinsPolicy::new(s, &shape()).unwrap_err();
        assert_eq!(bad(GlueSettings { timeout_minutes: 0, ..settings() }), GlueSettingsError::Timeout(0));
        assert_eq!(bad(GlueSettings { timeout_minutes: 10_081, ..settings() }), GlueSettingsError::Timeout(10_081));
        assert_eq!(
            bad(GlueSettings { notify_delay_after_minutes: Some(0), ..settings() }),
            GlueSettingsError::NotifyDelay
        );
        assert!(matches!(bad(GlueSettings { min_workers: 30, ..settings() }), GlueSettingsError::Workers { .. }));
        assert!(matches!(bad(GlueSettings { scale_in_cpu_load: 1.0, ..settings() }), GlueSettingsError::ScaleIn(_)));
        let e = GlueBuiltinsPolicy::new(settings(), &JobShape { step_seconds: 0, ..shape() }).unwrap_err();
        assert_eq!(e, GlueSettingsError::Step);
    }
}
