//! The telemetry a detector is fitted on, collected from episodes of an
//! environment that knows the truth (the simulator). It lives here, beside
//! the episode loop, because it is episodes run by policies: which windows
//! are healthy and which faults were active comes from [`StepInfo`] of each
//! step, so the detector crate never needs an environment, and the binary
//! only chooses the policies and seeds.
//!
//! [`StepInfo`]: selfheal_core::StepInfo

use crate::episode::{run_episode, Controller};
use selfheal_core::seeds::training_episode;
use selfheal_core::{Environment, FaultSet, RewardFn, StateEncoder, Telemetry};

/// Windows labelled by the environment's ground truth.
#[derive(Clone, Debug, Default)]
pub struct DetectorData {
    /// Windows in which the pipeline was healthy: what the forest grows on.
    pub healthy: Vec<Telemetry>,
    /// The other windows, each with the faults active in it.
    pub faulty: Vec<(Telemetry, FaultSet)>,
}

impl DetectorData {
    /// The unhealthy windows alone: the candidates signatures are fitted on.
    pub fn candidates(&self) -> Vec<Telemetry> {
        self.faulty.iter().map(|(t, _)| *t).collect()
    }
}

/// Run `episodes` episodes of every policy in `policies` (in order) on `env`
/// and keep every step's telemetry, labelled healthy or with its active
/// faults. Episode `i` of policy `p` uses the training seed
/// `training_episode(seed, p × 1,000,000 + i)`: never an evaluation seed,
/// and the same arguments give the same windows.
pub fn collect_detector_data<E, S, R>(
    env: &mut E,
    policies: &mut [Box<dyn Controller<E> + '_>],
    enc: &mut S,
    reward: &R,
    seed: u64,
    episodes: u64,
) -> DetectorData
where
    E: Environment,
    S: StateEncoder + ?Sized,
    R: RewardFn + ?Sized,
{
    let mut data = DetectorData::default();
    for (p, ctl) in policies.iter_mut().enumerate() {
        for i in 0..episodes {
            let s = training_episode(seed, p as u64 * 1_000_000 + i);
            run_episode(env, ctl.as_mut(), enc, reward, s, |r| {
                if r.info.healthy {
                    data.healthy.push(*r.telemetry);
                } else {
                    data.faulty.push((*r.telemetry, r.info.active));
                }
            });
        }
    }
    data
}
