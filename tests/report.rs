//! End-to-end tests of the policy review commands: report files, playbooks,
//! shadow comparison, policy diff, and off-policy evaluation against the truth.

use selfheal_agent::detector_encoder::DetectorEncoder;
use selfheal_agent::encoder::action_mask;
use selfheal_agent::{deciding_state, ModelFile};
use selfheal_core::{Detection, Detector, StateWords, Telemetry};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn selfheal(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_selfheal")).args(args).output().expect("selfheal runs");
    assert!(
        out.status.success(),
        "selfheal {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn shipped() -> ModelFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/policy.json");
    ModelFile::load(&path).expect("shipped policy")
}

struct Shape(u16);
impl Detector for Shape {
    fn id(&self) -> &str {
        "shape"
    }
    fn signatures(&self) -> u16 {
        self.0
    }
    fn detect(&self, _t: &Telemetry) -> Detection {
        Detection::default()
    }
}

#[test]
fn report_writes_four_files_with_every_visited_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    selfheal(&["report", "--out", out.to_str().unwrap()]);
    for f in ["report.html", "report.md", "policy.json", "policy.csv"] {
        assert!(out.join(f).metadata().unwrap().len() > 1000, "{f} written");
    }
    let m = shipped();
    let csv = std::fs::read_to_string(out.join("policy.csv")).unwrap();
    assert!(csv.lines().count() > m.states.len(), "one row per visited state (plus header)");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("policy.json")).unwrap()).unwrap();
    assert_eq!(json["format"], "selfheal-policy-review");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("id=\"policy-table\"") && html.contains("id=\"eval-table\""));
    // The tails of every evaluation, with a value in each policy's row.
    for key in ["episodes_with_loss", "worst_return", "incident_p95_steps", "longest_idle_streak", "watchdog_firings"] {
        assert!(html.contains(&format!("<th data-key=\"{key}\">")), "column {key}");
        let row = &html[html.find("<tr data-policy=\"learned\">").unwrap()..];
        let at = format!("<td data-key=\"{key}\" data-value=\"");
        let value = &row[row.find(&at).unwrap() + at.len()..];
        assert!(!value.starts_with('"'), "{key} has a value in the learned row");
    }
    // Six policies, Glue's built-ins among them, each a row of its own.
    for name in ["noop", "random", "rules", "glue-builtins", "learned", "oracle"] {
        assert_eq!(html.matches(&format!("<tr data-policy=\"{name}\">")).count(), 1, "one {name} row");
    }
    assert_eq!(html.matches("<tr data-policy=").count(), 6, "six policy rows");
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("@import"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Evaluation") && md.contains("## The policy in words"));
    // The action mix of `glue-builtins` is Glue's: never a remedy Glue lacks.
    let mix = &md[md.find("**glue-builtins**: ").expect("a glue-builtins action mix")..];
    let mix = &mix[..mix.find("\n\n").unwrap()];
    for a in ["schema_remap", "quarantine", "backpressure", "reschedule"] {
        assert!(!mix.contains(a), "glue-builtins chose {a}: {mix}");
    }
    assert!(mix.contains("retry_with_backoff") || mix.contains("restart"), "{mix}");
}

#[test]
fn one_playbook_per_signature_naming_the_action_taken_there() {
    let dir = tempfile::tempdir().unwrap();
    selfheal(&["playbook", "--out", dir.path().to_str().unwrap()]);
    let m = shipped();
    let sigs = m.encoder.config.detector.as_ref().unwrap().signatures;
    assert_eq!(sigs, 16);
    // Rebuild the policy independently of the report crate.
    let enc = match m.encoder.id.as_str() {
        "detector-v2" => DetectorEncoder::with_age(m.encoder.config.clone(), Arc::new(Shape(sigs))),
        _ => DetectorEncoder::new(m.encoder.config.clone(), Arc::new(Shape(sigs))),
    };
    let table = m.table(&enc).unwrap();
    let levels = m.encoder.config.worker_levels.len() as u32;
    for k in 1..=u32::from(sigs) {
        let path = dir.path().join(format!("signature-{k:02}.md"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains(&format!("failure signature {k}")));
        let states: Vec<u32> = table.visited_states().filter(|s| enc.unpack(*s).signature == k).collect();
        assert!(!states.is_empty(), "signature {k} has trained states");
        for s in &states {
            let p = enc.unpack(*s);
            let a =
                table.best(deciding_state(&table, &enc, *s), action_mask(p.level, levels, p.throttled, p.escalated));
            let row = format!("| {s} | {} | `{}` |", enc.describe(*s), a.name());
            assert!(text.contains(&row), "{}: missing {row}", path.display());
        }
        // The most visited state before any action: its action is named as the first one.
        let first = states
            .iter()
            .filter(|s| !enc.unpack(**s).attempted)
            .max_by_key(|s| (table.state_visits(**s), std::cmp::Reverse(**s)))
            .copied();
        if let Some(s) = first {
            let p = enc.unpack(s);
            let a = table.best(deciding_state(&table, &enc, s), action_mask(p.level, levels, p.throttled, p.escalated));
            assert!(
                text.contains(&format!("- **First**: `{}`", a.name())),
                "{}: first action {}",
                path.display(),
                a.name()
            );
        }
        for section in [
            "## Symptoms",
            "## What the policy does",
            "## Evidence",
            "## If the action fails, by hand",
            "## When it escalates",
        ] {
            assert!(text.contains(section), "{}: {section}", path.display());
        }
    }
    assert!(dir.path().join("README.md").exists());
}

#[test]
fn shadow_and_diff_read_logs_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("p.jsonl");
    selfheal(&["simlog", "--out", log.to_str().unwrap(), "--episodes", "10", "--epsilon", "0.1"]);
    let s = selfheal(&["shadow", "--log", log.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["decisions"], 2400);
    assert!(v["differed"].as_u64().unwrap() > 0, "{s}");
    let text = selfheal(&["shadow", "--log", log.to_str().unwrap(), "--limit", "3"]);
    assert!(text.contains("chose") && text.contains("rules:"), "{text}");

    // Diff: the shipped policy against itself, then against a copy with one state changed.
    let same = selfheal(&["diff", "shipped", "shipped"]);
    assert!(same.contains("changed in 0"), "{same}");
    let mut m = shipped();
    let row = m.states.iter_mut().max_by_key(|r| r.visits.iter().map(|v| u64::from(*v)).sum::<u64>()).unwrap();
    let id = row.id;
    row.q[9] = 1000.0; // escalate, allowed unless already escalated
    let newp = dir.path().join("new.json");
    m.save(&newp).unwrap();
    let d = selfheal(&["diff", "shipped", newp.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&d).unwrap();
    let changed = v["changed"].as_array().unwrap();
    assert!(changed.iter().any(|c| c["state"] == id && c["new"]["action"] == "escalate"), "{d}");
}

/// Acceptance: on 5 behaviour seeds, the doubly-robust 95 % interval of the
/// shipped policy's value, estimated from an ε-greedy log, holds its true value
/// (from running it in the simulator) in at least 4 cases.
#[test]
fn ope_doubly_robust_interval_covers_the_true_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut covered = 0;
    let mut truth = None;
    let mut table = String::new();
    for seed in 0..5u64 {
        let log = dir.path().join(format!("b{seed}.jsonl"));
        let mut args = vec![
            "simlog".to_string(),
            "--out".into(),
            log.display().to_string(),
            "--seed".into(),
            seed.to_string(),
            "--episodes".into(),
            "200".into(),
            "--epsilon".into(),
            "0.05".into(),
        ];
        if truth.is_none() {
            args.extend(["--truth-episodes".to_string(), "2000".into()]);
        }
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let s: serde_json::Value = serde_json::from_str(&selfheal(&args)).unwrap();
        if truth.is_none() {
            truth = s["true_value"].as_f64();
        }
        let t = truth.unwrap();
        let r: serde_json::Value =
            serde_json::from_str(&selfheal(&["ope", "--log", log.to_str().unwrap(), "--json"])).unwrap();
        let dr = &r["dr"];
        let (lo, hi) = (dr["ci95"][0].as_f64().unwrap(), dr["ci95"][1].as_f64().unwrap());
        let inside = lo <= t && t <= hi;
        covered += usize::from(inside);
        table.push_str(&format!(
            "seed {seed}: truth {t:.3}  DR {:.3} [{lo:.3}, {hi:.3}] {}  WIS {:.3} [{:.3}, {:.3}]  behaviour {:.3}  direct {:.3}\n",
            dr["value"].as_f64().unwrap(),
            if inside { "covers" } else { "MISSES" },
            r["wis"]["value"].as_f64().unwrap(),
            r["wis"]["ci95"][0].as_f64().unwrap(),
            r["wis"]["ci95"][1].as_f64().unwrap(),
            r["behaviour"]["value"].as_f64().unwrap(),
            r["direct"]["value"].as_f64().unwrap(),
        ));
    }
    eprintln!("{table}");
    assert!(covered >= 4, "the DR interval holds the truth in only {covered} of 5 cases:\n{table}");
}
