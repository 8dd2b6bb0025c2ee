//! Records are never silently dropped: after every step of any action sequence,
//! every record that arrived is delivered, queued, dead-lettered or counted lost.

use proptest::prelude::*;
use selfheal_core::{Action, Environment, Metric};
use selfheal_sim::{Scenario, Simulator};

fn scenarios() -> Vec<Scenario> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut out: Vec<Scenario> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| Scenario::load(&p).unwrap())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 4, "the shipped scenarios");
    // A tight pipeline that overflows quickly, so the lost path is exercised.
    out.push(
        Scenario::from_toml_str(
            "name='tight'\nhorizon=200\n[pipeline]\nunit_records=7\narrivals=3\ncapacity=[2,4]\nworkers=[1,2]\nbase_level=1\nbacklog_limit=5\nstep_seconds=30\n[faults]\nrate=0.3\n[faults.mix]\nstuck_job=1\ndownstream_outage=1\nschema_drift=1\npoison_records=1\n",
            "tight",
        )
        .unwrap(),
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_record_is_accounted_for(seed in any::<u64>(), actions in proptest::collection::vec(0usize..Action::COUNT, 1..300)) {
        for scenario in scenarios() {
            let mut sim = Simulator::new(&scenario);
            sim.reset(seed);
            let unit = f64::from(scenario.pipeline.unit_records);
            for &a in &actions {
                let step = sim.step(Action::from_index(a).unwrap());
                let l = step.info.ledger;
                prop_assert!(l.balanced(), "{}: {:?}", scenario.name, l);
                prop_assert_eq!(l.queued as f64, step.telemetry.get(Metric::Backlog));
                prop_assert!(l.queued <= u64::from(scenario.pipeline.backlog_limit) * unit as u64);
                for m in Metric::ALL {
                    let v = step.telemetry.get(*m);
                    prop_assert!(v.is_finite() && v >= 0.0, "{} = {}", m, v);
                }
                if step.done {
                    break;
                }
            }
        }
    }
}

#[test]
fn the_lost_path_is_reachable() {
    let s = scenarios().pop().unwrap();
    let mut sim = Simulator::new(&s);
    sim.reset(1);
    let mut lost = 0;
    for _ in 0..200 {
        lost = sim.step(Action::NoOp).info.ledger.lost;
    }
    assert!(lost > 0, "a stalled tight pipeline must lose records, and count them");
}
