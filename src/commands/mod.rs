//! One module per subcommand.

pub mod calibrate;
pub mod detect;
pub mod diff;
pub mod evaluate;
pub mod fit;
pub mod fit_detector;
pub mod fleet;
pub mod nab;
pub mod ope;
pub mod playbook;
pub mod provlog;
pub mod report;
pub mod run;
pub mod shadow;
pub mod simulate;
pub mod train;
