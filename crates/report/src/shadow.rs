//! The shadow comparison: where the rule policy's choice, logged beside every
//! decision, differed from the action chosen, and how those decisions turned out.

use crate::log::{Joined, Log};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One (chosen, rules) pair.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Pair {
    /// Chosen action.
    pub chosen: String,
    /// The rules' choice.
    pub shadow: String,
    /// Decisions.
    pub decisions: u64,
    /// Outcomes by status (`none` without an outcome record).
    pub outcomes: BTreeMap<String, u64>,
    /// Decisions with a reward record.
    pub rewarded: u64,
    /// Mean reward over those.
    pub mean_reward: f64,
}

/// The comparison.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShadowReport {
    /// Decisions with a shadow choice.
    pub decisions: u64,
    /// Of them, where the choices differed.
    pub differed: u64,
    /// Mean reward where they agreed.
    pub mean_reward_agreed: f64,
    /// Mean reward where they differed.
    pub mean_reward_differed: f64,
    /// Per pair, most frequent first.
    pub pairs: Vec<Pair>,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0u64), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// Compare.
pub fn compare(log: &Log) -> ShadowReport {
    let with: Vec<&Joined> = log.decisions.iter().filter(|j| !j.d.shadow.is_empty()).collect();
    let differ = |j: &&&Joined| j.d.shadow != j.d.chosen.name();
    let mut pairs: BTreeMap<(String, String), Pair> = BTreeMap::new();
    let mut sums: BTreeMap<(String, String), f64> = BTreeMap::new();
    for j in with.iter().filter(differ) {
        let key = (j.d.chosen.name().to_owned(), j.d.shadow.clone());
        let p = pairs.entry(key.clone()).or_insert_with(|| Pair {
            chosen: key.0.clone(),
            shadow: key.1.clone(),
            ..Pair::default()
        });
        p.decisions += 1;
        *p.outcomes.entry(j.outcome.clone().unwrap_or_else(|| "none".into())).or_default() += 1;
        if let Some(r) = j.reward {
            p.rewarded += 1;
            *sums.entry(key).or_default() += r;
        }
    }
    let mut pairs: Vec<Pair> = pairs
        .into_iter()
        .map(|(k, mut p)| {
            p.mean_reward =
                if p.rewarded > 0 { sums.get(&k).copied().unwrap_or(0.0) / p.rewarded as f64 } else { f64::NAN };
            p
        })
        .collect();
    pairs.sort_by(|a, b| b.decisions.cmp(&a.decisions).then(a.chosen.cmp(&b.chosen)).then(a.shadow.cmp(&b.shadow)));
    ShadowReport {
        decisions: with.len() as u64,
        differed: with.iter().filter(differ).count() as u64,
        mean_reward_agreed: mean(with.iter().filter(|j| !differ(j)).filter_map(|j| j.reward)),
        mean_reward_differed: mean(with.iter().filter(differ).filter_map(|j| j.reward)),
        pairs,
    }
}

/// The comparison in words, with up to `limit` differing decisions listed.
pub fn text(r: &ShadowReport, log: &Log, limit: usize) -> String {
    let mut s = format!(
        "{} decisions with a rules (shadow) choice; they differed in {} ({:.1} %)\nmean reward: {:.3} where they agreed, {:.3} where they differed\n\n",
        r.decisions,
        r.differed,
        100.0 * r.differed as f64 / r.decisions.max(1) as f64,
        r.mean_reward_agreed,
        r.mean_reward_differed
    );
    s.push_str(&format!("{:<20} {:<20} {:>9} {:>11}  outcomes\n", "chosen", "rules", "decisions", "mean reward"));
    for p in &r.pairs {
        let o: Vec<String> = p.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s.push_str(&format!(
            "{:<20} {:<20} {:>9} {:>11.3}  {}\n",
            p.chosen,
            p.shadow,
            p.decisions,
            p.mean_reward,
            o.join(", ")
        ));
    }
    if limit > 0 && r.differed > 0 {
        let _ = writeln!(s, "\ndecisions where they differed (first {limit}):");
        for j in log.decisions.iter().filter(|j| !j.d.shadow.is_empty() && j.d.shadow != j.d.chosen.name()).take(limit)
        {
            let _ = writeln!(
                s,
                "{}  {}  {}  chose {} (rules: {}), verdict {}, outcome {}, reward {}  [{}]",
                j.d.id,
                j.d.ts_ms,
                j.d.pipeline,
                j.d.chosen,
                j.d.shadow,
                j.d.verdict,
                j.outcome.as_deref().unwrap_or("none"),
                j.reward.map_or("–".into(), |r| format!("{r:.3}")),
                j.d.state_text
            );
        }
    }
    s
}
