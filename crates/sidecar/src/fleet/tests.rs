use super::*;
use crate::actuate::{ActError, ActionCall, Actuator, DryRun, FencedActuator};
use selfheal_agent::{EncoderConfig, ModelMeta, QParams, TelemetryEncoder};
use selfheal_core::{Action, EncodeState};

fn lease(key: &str, epoch: u64, exp: i64) -> Lease {
    Lease { record: LeaseRecord { key: key.into(), holder: "me".into(), epoch, expires_at_ms: exp } }
}

fn gate(held: Held, margin_ms: u64) -> (watch::Sender<Arc<Held>>, LeaseGate) {
    let (tx, rx) = watch::channel(Arc::new(held));
    (tx, LeaseGate::new(rx, Duration::from_millis(margin_ms)))
}

#[test]
fn the_gate_acts_only_with_more_than_the_margin_left_and_says_why_not() {
    let mut held = Held::default();
    held.leases.insert("p1".into(), lease("p1", 4, 10_000));
    held.kept.insert("p3".into(), lease("p3", 2, 10_000));
    held.holders.insert("p2".into(), Holder { holder: "replica-b".into(), epoch: 9, live: true });
    let (tx, g) = gate(held, 2_000);
    assert_eq!(g.may_act("p1", 7_999), Ok(4));
    let err = g.may_act("p1", 8_000).unwrap_err();
    assert!(err.contains("2000 ms left, within the 2000 ms margin"), "{err}");
    assert_eq!(g.may_act("p2", 0), Err("held by replica-b (epoch 9)".into()));
    assert_eq!(g.may_act("p9", 0), Err("no lease taken yet".into()));
    assert!(g.may_act("p3", 0).is_err(), "a drained lease starts nothing");
    // A running action may go on until half the margin is left.
    assert!(g.may_continue("p1", 8_999) && !g.may_continue("p1", 9_000));
    assert!(g.may_continue("p3", 8_999), "nor is one running under a drained lease cut short");
    assert!(!g.may_continue("p2", 0));
    // The keeper's next publication is what the gate reads, without waiting.
    tx.send(Arc::new(Held::default())).unwrap();
    assert!(g.may_act("p1", 0).is_err());
}

#[test]
fn the_gate_obeys_the_earlier_of_the_wall_expiry_and_the_monotonic_deadline() {
    let now_ms = 1_000_000;
    let mut held = Held::default();
    // The wall clock says a minute left (stepped back, say); the monotonic
    // deadline of the renewal says 1.5 s.
    held.leases.insert("p1".into(), lease("p1", 4, now_ms + 60_000));
    held.deadlines.insert("p1".into(), Instant::now() + Duration::from_millis(1_500));
    held.leases.insert("p2".into(), lease("p2", 5, now_ms + 60_000));
    held.deadlines.insert("p2".into(), Instant::now() + Duration::from_secs(50));
    // A wall expiry earlier than the monotonic deadline wins too.
    held.leases.insert("p3".into(), lease("p3", 6, now_ms + 1_500));
    held.deadlines.insert("p3".into(), Instant::now() + Duration::from_secs(50));
    let (_tx, g) = gate(held, 2_000);
    let err = g.may_act("p1", now_ms).unwrap_err();
    assert!(err.contains("within the 2000 ms margin"), "{err}");
    assert_eq!(g.may_act("p2", now_ms), Ok(5));
    assert!(g.may_act("p3", now_ms).is_err());
    // A running action: half the margin (1 s) is still left on p1's monotonic deadline.
    assert!(g.may_continue("p1", now_ms));
    let (_tx, g) = gate(
        Held {
            leases: [("p1".to_string(), lease("p1", 4, now_ms + 60_000))].into(),
            deadlines: [("p1".to_string(), Instant::now())].into(),
            ..Held::default()
        },
        2_000,
    );
    assert!(!g.may_continue("p1", now_ms), "a monotonic deadline passed stops a running action");
}

fn call(key: &str) -> ActionCall {
    ActionCall {
        id: "d1".into(),
        idempotency_key: key.into(),
        pipeline: "p1".into(),
        action: Action::Restart,
        attempt: 1,
    }
}

#[tokio::test]
async fn the_fenced_actuator_refuses_an_older_epoch_per_pipeline() {
    let a = FencedActuator::new(Arc::new(DryRun));
    assert!(a.apply(&call("d1/restart@2")).await.is_ok());
    assert!(a.apply(&call("d2/restart@3")).await.is_ok(), "a takeover");
    let refused = a.apply(&call("d3/restart@2")).await.unwrap_err();
    assert!(matches!(&refused, ActError::Failed(m) if m.contains("epoch 2") && m.contains("epoch 3")), "{refused:?}");
    let bare = a.apply(&call("d4/restart")).await.unwrap_err();
    assert!(matches!(&bare, ActError::Failed(m) if m.contains("no lease epoch")), "a key without an epoch: {bare:?}");
    let other = ActionCall { pipeline: "p2".into(), ..call("d5/restart@1") };
    assert!(a.apply(&other).await.is_ok(), "pipelines are fenced apart");
    assert_eq!(a.name(), "dry-run");
}

fn config() -> EncoderConfig {
    EncoderConfig { worker_levels: vec![2, 4, 8], base_level: 1, detector: None, driver_workers: 0 }
}

fn model() -> ModelFile {
    let e = TelemetryEncoder::new(config());
    let mut t = QTable::new(e.num_states());
    t.set_row(3, &[1.0; Action::COUNT], &[2; Action::COUNT]);
    let meta = ModelMeta {
        seed: 1,
        scenario: "unit".into(),
        episodes: 10,
        reward_fn: "v1".into(),
        params: QParams::default(),
        selfheal_version: "test".into(),
        grown_from: None,
    };
    ModelFile::new(meta, &e, config(), &t)
}

#[test]
fn a_policy_version_must_fit_the_running_model() {
    let running = model();
    let e = TelemetryEncoder::new(config());
    let t = fit(&running, &running, &e).unwrap();
    assert_eq!(t.row(3), &[1.0; Action::COUNT]);
    let mut other = model();
    other.encoder.id = "detector-v9".into();
    assert!(fit(&running, &other, &e).unwrap_err().contains("encoder"));
    let mut other = model();
    other.encoder.config.detector = Some(selfheal_agent::DetectorRef { fingerprint: "f00d".into(), signatures: 4 });
    assert!(fit(&running, &other, &e).unwrap_err().contains("detector"));
    let mut other = model();
    other.encoder.config.worker_levels = vec![2, 4, 16];
    assert_eq!(other.num_states, running.num_states, "same shape, other meaning");
    let why = fit(&running, &other, &e).unwrap_err();
    assert!(why.contains("worker levels [2, 4, 16]"), "{why}");
    let mut other = model();
    other.encoder.config.base_level = 0;
    assert!(fit(&running, &other, &e).unwrap_err().contains("base level"));
    let mut other = model();
    other.encoder.config.driver_workers = 1;
    assert!(fit(&running, &other, &e).unwrap_err().contains("driver workers"));
    let mut other = model();
    other.actions.pop();
    assert!(fit(&running, &other, &e).unwrap_err().contains("actions"));
    let mut other = model();
    other.num_states += 1;
    assert!(fit(&running, &other, &e).unwrap_err().contains("states"));
}

#[test]
fn old_decision_lines_load_and_new_ones_name_their_policy_version() {
    use crate::provenance::Record;
    let old = r#"{"kind":"decision","id":"r-1","ts_ms":1,"pipeline":"p","window":{"ts_ms":0,"latency_p95_s":1.0,"error_ratio":0.0,"backlog":0.0,"records_in":1.0,"workers":2.0},"score":0.1,"anomalous":false,"signature":0,"state":3,"state_text":"s","q":[],"visits":0,"chosen":"noop","probability":1.0,"shadow":"noop","mode":"act","verdict":"noop","reason":"r","idempotency_key":null}"#;
    let rec: Record = serde_json::from_str(old).unwrap_or_else(|e| panic!("an old line no longer loads: {e}"));
    let Record::Decision(mut d) = rec else { panic!("not a decision") };
    assert_eq!(d.policy_version, None);
    assert!(!serde_json::to_string(&Record::Decision(d.clone())).unwrap().contains("policy_version"));
    d.policy_version = Some(42);
    let line = serde_json::to_string(&Record::Decision(d.clone())).unwrap();
    assert!(line.contains("\"policy_version\":42"), "{line}");
    let back: Record = serde_json::from_str(&line).unwrap();
    assert_eq!(back, Record::Decision(d));
}
