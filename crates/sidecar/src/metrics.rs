//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! The counters live where they are counted (the decision core's
//! [`Stats`], the executor's breakers, the ingest handler's atomics); this
//! module only renders a snapshot of them. Hand-written because the format is
//! a dozen lines of rules and a metrics crate would add a registry, a global
//! and a second source of truth; `promtool check metrics` checks the result
//! in the end-to-end tests.

use crate::decide::Stats;
use selfheal_guard::breaker::BreakerState;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Everything `/metrics` shows, taken at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Decision counters.
    pub stats: Stats,
    /// (endpoint, breaker state, calls rejected by the breaker).
    pub breakers: Vec<(String, BreakerState, u64)>,
    /// Last anomaly score per pipeline.
    pub scores: Vec<(String, f64)>,
    /// Ingest lines accepted.
    pub ingest_accepted: u64,
    /// Ingest lines rejected.
    pub ingest_rejected: u64,
    /// Proposals waiting for approval.
    pub proposals_pending: usize,
    /// Age of the oldest open proposal, seconds (0 with none).
    pub proposals_oldest_age_seconds: f64,
    /// 1 while the kill switch is on.
    pub paused: bool,
    /// Escalations delivered / not delivered.
    pub escalations_delivered: u64,
    /// Escalations that could not be delivered.
    pub escalations_failed: u64,
    /// Durable page delivery.
    pub pages: PageCounts,
    /// Pipelines held, capped and evicted.
    pub pipelines: PipelineCounts,
}

/// Bounded memory: pipelines held, refused for the cap and evicted (see
/// [`crate::window::Bounds`] and [`crate::decide::DecisionCore::evict_idle`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineCounts {
    /// `[daemon] max_pipelines`.
    pub cap: usize,
    /// Pipelines with an open window at ingest (0 without the HTTP source).
    pub ingest_live: usize,
    /// Pipelines the decision core holds state for.
    pub decide_live: usize,
    /// Ingest lines refused because they named a new pipeline beyond the cap.
    pub refused_cap: u64,
    /// Pipelines evicted from ingest.
    pub ingest_evicted: u64,
    /// Pipelines evicted from the decision core.
    pub decide_evicted: u64,
}

/// The page delivery counters (see [`crate::pager`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// Pages not yet accepted by the webhook.
    pub undelivered: u64,
    /// Pages accepted.
    pub delivered: u64,
    /// Pages refused for good.
    pub refused: u64,
    /// Attempts answered 2xx.
    pub attempts_delivered: u64,
    /// Attempts failed transiently.
    pub attempts_retry: u64,
    /// Attempts refused for good.
    pub attempts_permanent: u64,
    /// Pages written to the second channel.
    pub fallback_written: u64,
    /// Failed writes to the second channel.
    pub fallback_failed: u64,
}

impl PageCounts {
    /// A snapshot of the pager's counters.
    pub fn of(s: &crate::pager::PagerStats) -> PageCounts {
        use std::sync::atomic::Ordering::Relaxed;
        PageCounts {
            undelivered: s.undelivered.load(Relaxed),
            delivered: s.delivered.load(Relaxed),
            refused: s.refused.load(Relaxed),
            attempts_delivered: s.attempts_delivered.load(Relaxed),
            attempts_retry: s.attempts_retry.load(Relaxed),
            attempts_permanent: s.attempts_permanent.load(Relaxed),
            fallback_written: s.fallback_written.load(Relaxed),
            fallback_failed: s.fallback_failed.load(Relaxed),
        }
    }
}

/// Label value escaping of the text format: backslash, quote, newline.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Render a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut o = String::with_capacity(4096);
    head(&mut o, "selfheal_windows_total", "counter", "Telemetry windows decided on.");
    let _ = writeln!(o, "selfheal_windows_total {}", s.stats.windows);

    head(&mut o, "selfheal_decisions_total", "counter", "Decisions by chosen action and guardrail verdict.");
    for ((action, verdict), n) in &s.stats.decisions {
        let _ = writeln!(o, "selfheal_decisions_total{{action=\"{}\",verdict=\"{}\"}} {n}", action.name(), verdict);
    }
    head(
        &mut o,
        "selfheal_policy_overrides_total",
        "counter",
        "Choices the policy stack overrode: gate_fallback (unsure silence), watchdog_escalate, watchdog_fallback, \
         evidence_escalate and evidence_veto (a fault Glue's metrics name, which scaling cannot fix), \
         evidence_remedy (the remedy that evidence names).",
    );
    for cause in selfheal_agent::Cause::OVERRIDES {
        let n = s.stats.overrides.get(&cause).copied().unwrap_or(0);
        let _ = writeln!(o, "selfheal_policy_overrides_total{{cause=\"{}\"}} {n}", cause.name());
    }
    head(
        &mut o,
        "selfheal_expected_metric_missing",
        "gauge",
        "1 for each metric the detector or the reward reads that a pipeline has not reported in its first windows.",
    );
    for (pipeline, missing) in &s.stats.missing {
        for m in missing {
            let _ = writeln!(o, "selfheal_expected_metric_missing{{pipeline=\"{}\",metric=\"{m}\"}} 1", esc(pipeline));
        }
    }
    head(
        &mut o,
        "selfheal_rewards_skipped_total",
        "counter",
        "Windows whose reward could not be computed (an input metric absent): no Q update.",
    );
    let _ = writeln!(o, "selfheal_rewards_skipped_total {}", s.stats.rewards_skipped);
    head(&mut o, "selfheal_action_outcomes_total", "counter", "Actions by how they ended.");
    for (status, n) in &s.stats.outcomes {
        let _ = writeln!(o, "selfheal_action_outcomes_total{{status=\"{}\"}} {n}", status);
    }
    head(&mut o, "selfheal_breaker_state", "gauge", "Circuit breaker per endpoint: 0 closed, 1 open, 2 half-open.");
    for (ep, st, _) in &s.breakers {
        let _ =
            writeln!(o, "selfheal_breaker_state{{endpoint=\"{}\",state=\"{}\"}} {}", esc(ep), st.name(), st.gauge());
    }
    head(&mut o, "selfheal_breaker_rejected_total", "counter", "Calls refused by an open breaker.");
    for (ep, _, n) in &s.breakers {
        let _ = writeln!(o, "selfheal_breaker_rejected_total{{endpoint=\"{}\"}} {n}", esc(ep));
    }
    head(&mut o, "selfheal_anomaly_score", "gauge", "Anomaly score of each pipeline's latest window, 0..1.");
    for (p, v) in &s.scores {
        let _ = writeln!(o, "selfheal_anomaly_score{{pipeline=\"{}\"}} {}", esc(p), num(*v));
    }
    // A summary without quantiles: rewards are mostly negative, so their sum falls,
    // which a counter may not; `_sum` is only a valid suffix on a summary or histogram.
    head(&mut o, "selfheal_reward", "summary", "Rewards observed after decisions.");
    let _ = writeln!(o, "selfheal_reward_sum {}", num(s.stats.reward_sum));
    let _ = writeln!(o, "selfheal_reward_count {}", s.stats.rewards);
    head(&mut o, "selfheal_rewards_total", "counter", "Rewards observed.");
    let _ = writeln!(o, "selfheal_rewards_total {}", s.stats.rewards);
    head(&mut o, "selfheal_q_updates_total", "counter", "Online Q-table updates.");
    let _ = writeln!(o, "selfheal_q_updates_total {}", s.stats.q_updates);
    head(
        &mut o,
        "selfheal_escalations_total",
        "counter",
        "Escalations settled, by delivery: true once the webhook accepted one, false when it refused one for good \
         or none is configured (pages still being retried are in selfheal_pages_undelivered).",
    );
    let _ = writeln!(o, "selfheal_escalations_total{{delivered=\"true\"}} {}", s.escalations_delivered);
    let _ = writeln!(o, "selfheal_escalations_total{{delivered=\"false\"}} {}", s.escalations_failed);
    let p = &s.pages;
    head(
        &mut o,
        "selfheal_pages_undelivered",
        "gauge",
        "Pages raised and not yet accepted by the webhook; they are retried, across restarts, until it does.",
    );
    let _ = writeln!(o, "selfheal_pages_undelivered {}", p.undelivered);
    head(
        &mut o,
        "selfheal_page_delivery_attempts_total",
        "counter",
        "Webhook delivery attempts by outcome: delivered (2xx), retry (429, 5xx, timeout, connection error), \
         permanent (any other 4xx: the page goes to the fallback channel).",
    );
    for (outcome, n) in
        [("delivered", p.attempts_delivered), ("retry", p.attempts_retry), ("permanent", p.attempts_permanent)]
    {
        let _ = writeln!(o, "selfheal_page_delivery_attempts_total{{outcome=\"{outcome}\"}} {n}");
    }
    head(
        &mut o,
        "selfheal_page_fallback_total",
        "counter",
        "Pages written to the [notify.fallback] channel, by result of the write.",
    );
    let _ = writeln!(o, "selfheal_page_fallback_total{{result=\"written\"}} {}", p.fallback_written);
    let _ = writeln!(o, "selfheal_page_fallback_total{{result=\"failed\"}} {}", p.fallback_failed);
    head(&mut o, "selfheal_ingest_lines_total", "counter", "Lines posted to /ingest, by result.");
    let _ = writeln!(o, "selfheal_ingest_lines_total{{result=\"accepted\"}} {}", s.ingest_accepted);
    let _ = writeln!(o, "selfheal_ingest_lines_total{{result=\"rejected\"}} {}", s.ingest_rejected);
    head(&mut o, "selfheal_proposals_pending", "gauge", "Proposals waiting for a human.");
    let _ = writeln!(o, "selfheal_proposals_pending {}", s.proposals_pending);
    // What waits and for how long (issue 19).
    head(
        &mut o,
        "selfheal_proposal_oldest_age_seconds",
        "gauge",
        "Seconds the oldest open proposal has waited for a human (0 with none open).",
    );
    let _ = writeln!(o, "selfheal_proposal_oldest_age_seconds {}", num(s.proposals_oldest_age_seconds));
    head(
        &mut o,
        "selfheal_proposals_unanswered_total",
        "counter",
        "Proposals paged as unanswered past guard.approval_unanswered_secs.",
    );
    let _ = writeln!(o, "selfheal_proposals_unanswered_total {}", s.stats.proposals_unanswered);
    head(&mut o, "selfheal_paused", "gauge", "1 while the kill switch stops all acting.");
    let _ = writeln!(o, "selfheal_paused {}", u8::from(s.paused));
    render_pipelines(&mut o, &s.pipelines);
    render_latency(&mut o);
    o
}

/// The bounded-memory families: live pipelines, the cap, refusals, evictions.
fn render_pipelines(o: &mut String, p: &PipelineCounts) {
    head(
        o,
        "selfheal_pipelines",
        "gauge",
        "Pipelines held: by the ingest assembler (an open window) and by the decision core (its state).",
    );
    let _ = writeln!(o, "selfheal_pipelines{{holder=\"ingest\"}} {}", p.ingest_live);
    let _ = writeln!(o, "selfheal_pipelines{{holder=\"decide\"}} {}", p.decide_live);
    head(o, "selfheal_pipelines_max", "gauge", "The pipeline cap ([daemon] max_pipelines).");
    let _ = writeln!(o, "selfheal_pipelines_max {}", p.cap);
    head(
        o,
        "selfheal_ingest_refused_total",
        "counter",
        "Ingest lines refused with 429, by reason: pipeline_cap (a new pipeline beyond [daemon] max_pipelines). \
         Also counted in selfheal_ingest_lines_total{result=\"rejected\"}.",
    );
    let _ = writeln!(o, "selfheal_ingest_refused_total{{reason=\"pipeline_cap\"}} {}", p.refused_cap);
    head(
        o,
        "selfheal_pipelines_evicted_total",
        "counter",
        "Pipelines forgotten after [daemon] pipeline_idle_secs without a sample, by holder.",
    );
    let _ = writeln!(o, "selfheal_pipelines_evicted_total{{holder=\"ingest\"}} {}", p.ingest_evicted);
    let _ = writeln!(o, "selfheal_pipelines_evicted_total{{holder=\"decide\"}} {}", p.decide_evicted);
}

// ---- Latency histograms (issue 18: cost per pipeline) ----------------------
//
// Process-wide statics, unlike the counters above: the poll is timed inside a
// telemetry source another crate implements (the aws crate's CloudWatch source), the
// decision inside the daemon loop, and a static is the one place both reach
// without widening the `TelemetrySource` trait. One process runs one daemon.

/// A Prometheus histogram of durations with fixed upper bounds, lock-free:
/// `observe` is one bucket search over `N` bounds and three relaxed atomic adds
/// (a few ns next to the ~10 µs of a decision), so it can sit on the hot path.
pub struct Histogram<const N: usize> {
    /// Upper bounds (inclusive), nanoseconds, ascending.
    bounds_ns: [u64; N],
    /// Observations per bucket (not cumulative; `+Inf` is `count − Σ buckets`).
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram with these upper bounds (nanoseconds, ascending).
    pub const fn new(bounds_ns: [u64; N]) -> Histogram<N> {
        Histogram {
            bounds_ns,
            buckets: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Count one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = self.bounds_ns.iter().position(|&b| ns <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Render the series of family `name` (seconds) with these labels
    /// (`""` or `key="value",`…): cumulative `_bucket{le}`, `_sum`, `_count`.
    /// The `# HELP`/`# TYPE` lines are the caller's.
    pub fn render(&self, o: &mut String, name: &str, labels: &str) {
        let count = self.count.load(Ordering::Relaxed);
        let mut cum = 0;
        for (b, n) in self.bounds_ns.iter().zip(&self.buckets) {
            // A racing observe may have bumped a bucket but not yet the count.
            cum = (cum + n.load(Ordering::Relaxed)).min(count);
            let _ = writeln!(o, "{name}_bucket{{{labels}le=\"{}\"}} {cum}", num(*b as f64 / 1e9));
        }
        let _ = writeln!(o, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let braces = |l: &str| if l.is_empty() { String::new() } else { format!("{{{}}}", l.trim_end_matches(',')) };
        let _ = writeln!(o, "{name}_sum{} {}", braces(labels), num(self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9));
        let _ = writeln!(o, "{name}_count{} {count}", braces(labels));
    }
}

/// Decision buckets: 5 µs … 1 s (the in-process target is p99 ≤ 50 µs; a
/// durable log append, an fsync, takes milliseconds).
const DECISION_BOUNDS_NS: [u64; 14] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    50_000_000,
    250_000_000,
    1_000_000_000,
];

/// `selfheal_decision_seconds{stage="decide"}`: `DecisionCore::on_window` for
/// one window in the daemon loop (what the 50 µs target of the in-process
/// bench measures).
pub static DECISION_SECONDS: Histogram<14> = Histogram::new(DECISION_BOUNDS_NS);

/// `selfheal_decision_seconds{stage="logged"}`: the same window from
/// `on_window` to its records appended to the provenance log (durably, with
/// an fsync, when it will act) and its plan started.
pub static DECISION_LOGGED_SECONDS: Histogram<14> = Histogram::new(DECISION_BOUNDS_NS);

/// `selfheal_source_poll_seconds`: one poll round of a polling source for all
/// its pipelines (CloudWatch: every `GetMetricData` call of a poll, 500
/// queries each, pages followed; a poll before the next period has closed
/// calls nothing and is not counted). Buckets 5 ms … 120 s.
pub static SOURCE_POLL_SECONDS: Histogram<14> = Histogram::new([
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
]);

fn render_latency(o: &mut String) {
    head(
        o,
        "selfheal_decision_seconds",
        "histogram",
        "Seconds per window in the decision loop, by stage: decide (on_window), logged (decided, appended to the \
         provenance log, plan started).",
    );
    DECISION_SECONDS.render(o, "selfheal_decision_seconds", "stage=\"decide\",");
    DECISION_LOGGED_SECONDS.render(o, "selfheal_decision_seconds", "stage=\"logged\",");
    head(
        o,
        "selfheal_source_poll_seconds",
        "histogram",
        "Seconds per poll round of the telemetry source for all pipelines (CloudWatch: its GetMetricData calls, \
         made once a new period has closed); empty for push and simulated sources.",
    );
    SOURCE_POLL_SECONDS.render(o, "selfheal_source_poll_seconds", "");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_escaped_and_every_family_typed() {
        let mut s = Snapshot::default();
        s.stats.decisions.insert((selfheal_core::Action::ScaleUp, crate::provenance::Verdict::Allowed), 3);
        s.scores.push(("a\"b".into(), 0.5));
        let text = render(&s);
        assert!(text.contains("selfheal_decisions_total{action=\"scale_up\",verdict=\"allowed\"} 3"));
        assert!(text.contains("pipeline=\"a\\\"b\""));
        assert!(text.contains("selfheal_ingest_refused_total{reason=\"pipeline_cap\"} 0"), "{text}");
        assert!(text.contains("selfheal_pipelines{holder=\"decide\"} 0"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let sample = line.split(['{', ' ']).next().unwrap();
            let summary = sample.strip_suffix("_sum").or_else(|| sample.strip_suffix("_count"));
            let name = summary.filter(|f| text.contains(&format!("# TYPE {f} summary"))).unwrap_or(sample);
            let histo = sample
                .strip_suffix("_bucket")
                .or_else(|| sample.strip_suffix("_sum"))
                .or_else(|| sample.strip_suffix("_count"));
            let name = histo.filter(|f| text.contains(&format!("# TYPE {f} histogram"))).unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_seconds_with_sum_and_count() {
        let h = Histogram::new([10_000, 50_000, 1_000_000]);
        for us in [3, 10, 20, 49, 51, 2_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut o = String::new();
        h.render(&mut o, "x_seconds", "");
        h.render(&mut o, "x_seconds", "stage=\"a\",");
        // 3 and 10 µs ≤ 10 µs; 20 and 49 ≤ 50 µs; 51 ≤ 1 ms; 2 ms only in +Inf.
        for line in [
            "x_seconds_bucket{le=\"0.00001\"} 2",
            "x_seconds_bucket{le=\"0.00005\"} 4",
            "x_seconds_bucket{le=\"0.001\"} 5",
            "x_seconds_bucket{le=\"+Inf\"} 6",
            "x_seconds_count 6",
            "x_seconds_sum 0.002133",
        ] {
            assert!(o.lines().any(|l| l == line), "no `{line}` in\n{o}");
        }
        assert!(o.lines().any(|l| l == "x_seconds_bucket{stage=\"a\",le=\"0.00005\"} 4"), "{o}");
        assert!(o.lines().any(|l| l == "x_seconds_count{stage=\"a\"} 6"), "{o}");
        // Both daemon histograms are rendered as typed families.
        let text = render(&Snapshot::default());
        for f in ["selfheal_decision_seconds", "selfheal_source_poll_seconds"] {
            assert!(text.contains(&format!("# TYPE {f} histogram")), "{text}");
        }
        assert!(text.contains("selfheal_decision_seconds_bucket{stage=\"decide\",le=\"+Inf\"} "), "{text}");
        assert!(text.contains("selfheal_decision_seconds_count{stage=\"logged\"} "), "{text}");
        assert!(text.contains("selfheal_source_poll_seconds_bucket{le=\"+Inf\"} "), "{text}");
    }
}
