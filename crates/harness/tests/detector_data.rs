//! `collect_detector_data` on the real simulator: every step of every
//! episode of every policy is kept once, labelled by the simulator's ground
//! truth, and the same arguments give the same windows.

use selfheal_agent::{EncoderConfig, NoOpPolicy, RandomPolicy, TelemetryEncoder};
use selfheal_core::{Environment, RewardV1};
use selfheal_harness::{collect_detector_data, Controller, DetectorData, Fixed};
use selfheal_sim::{Scenario, Simulator};

fn collect(seed: u64, episodes: u64) -> (DetectorData, u32) {
    let scenario = Scenario::builtin_default();
    let mut env = Simulator::new(&scenario);
    let horizon = env.horizon();
    let mut enc = TelemetryEncoder::new(EncoderConfig {
        worker_levels: scenario.pipeline.workers.clone(),
        base_level: scenario.pipeline.base_level,
        detector: None,
        driver_workers: 0,
    });
    let mut policies: Vec<Box<dyn Controller<Simulator>>> =
        vec![Box::new(Fixed(NoOpPolicy)), Box::new(Fixed(RandomPolicy::new(seed)))];
    let data = collect_detector_data(&mut env, &mut policies, &mut enc, &RewardV1::default(), seed, episodes);
    (data, horizon)
}

#[test]
fn every_step_is_kept_once_labelled_and_the_same_seed_gives_the_same_windows() {
    let (data, horizon) = collect(11, 3);
    assert_eq!(data.healthy.len() + data.faulty.len(), 2 * 3 * horizon as usize);
    assert!(!data.healthy.is_empty() && !data.faulty.is_empty(), "the default scenario has healthy and faulty steps");
    assert_eq!(data.candidates().len(), data.faulty.len());
    let (again, _) = collect(11, 3);
    assert_eq!(again.healthy, data.healthy);
    assert_eq!(again.faulty, data.faulty);
    let (other, _) = collect(12, 3);
    assert_ne!(other.faulty, data.faulty, "another seed, other episodes");
}
