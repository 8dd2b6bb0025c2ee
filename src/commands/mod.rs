//! One module per subcommand.

pub mod calibrate;
pub mod detect;
pub mod evaluate;
pub mod fit_detector;
pub mod nab;
pub mod provlog;
pub mod run;
pub mod simulate;
pub mod train;
