//! Support of the AWS end-to-end tests: moto as a process, a fault-injecting
//! proxy in front of it, and [`world::World`], the closed loop of simulator,
//! local AWS and the real `selfheal run`.
#![allow(dead_code)]

pub mod glue_world;
pub mod moto;
pub mod proxy;
pub mod world;
