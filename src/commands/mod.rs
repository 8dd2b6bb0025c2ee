//! One module per subcommand.

pub mod calibrate;
pub mod evaluate;
pub mod simulate;
pub mod train;
