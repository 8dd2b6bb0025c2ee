//! Checked parameters, the shape of linfa's `ParamGuard`: a parameter struct
//! is plain data (it is what serializes, in model files and CLI JSON), and
//! the components that need its bounds take a [`Checked`] one instead.
//!
//! Why: bounds used to be checked at the edge (the CLI) while the learner and
//! the detectors accepted any value, so a model file or a call site that
//! skipped the check ran with, say, `alpha_power = 0.3` (a step size that no
//! longer converges). Now `P::check(p)` is the only way to a `Checked<P>`,
//! and constructors such as `QLearner::new` take `Checked<P>`: an unchecked
//! value cannot reach them, and each bound lives in one place, the type's own
//! [`ParamGuard::validate`].

use std::ops::Deref;

/// A set of parameters whose bounds can be checked.
///
/// Implement [`ParamGuard::validate`]; [`ParamGuard::check`] wraps the value
/// in [`Checked`] when it passes, and is the only way to make one.
pub trait ParamGuard: Sized {
    /// The error naming the first parameter out of its bounds.
    type Error: std::error::Error;

    /// Check the bounds without consuming the value (pure).
    ///
    /// # Errors
    /// The first parameter out of its bounds.
    fn validate(&self) -> Result<(), Self::Error>;

    /// Check the bounds and hand back the checked parameters.
    ///
    /// # Errors
    /// As [`ParamGuard::validate`]; the value is dropped with the error (the
    /// caller still holds what it read, e.g. the file, to report it).
    fn check(self) -> Result<Checked<Self>, Self::Error> {
        self.validate()?;
        Ok(Checked(self))
    }
}

/// Parameters that passed their [`ParamGuard::check`]. Read them through
/// `Deref`; there is no other constructor, and no `Deserialize` (parse the
/// plain struct, then check it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Checked<P>(P);

impl<P> Checked<P> {
    /// The plain parameters (e.g. to write them into a model file).
    pub fn into_inner(self) -> P {
        self.0
    }
}

impl<P> Deref for Checked<P> {
    type Target = P;

    fn deref(&self) -> &P {
        &self.0
    }
}

impl<P: ParamGuard + Default> Default for Checked<P> {
    /// The defaults, checked.
    ///
    /// # Panics
    /// When a type's own defaults break its bounds: a programming error
    /// that every type's unit tests catch (`defaults_pass_their_check`).
    fn default() -> Self {
        #[allow(clippy::expect_used)] // defaults are constants; each type's tests check them
        P::default().check().expect("default parameters pass their own check")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, Default, PartialEq)]
    struct Rate(f64);

    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("rate must be in [0, 1]")]
    struct BadRate;

    impl ParamGuard for Rate {
        type Error = BadRate;
        fn validate(&self) -> Result<(), BadRate> {
            if (0.0..=1.0).contains(&self.0) {
                Ok(())
            } else {
                Err(BadRate)
            }
        }
    }

    #[test]
    fn check_wraps_only_values_in_bounds() {
        let ok = Rate(0.25).check().unwrap();
        assert_eq!(*ok, Rate(0.25));
        assert_eq!(ok.0 .0, 0.25);
        assert_eq!(ok.into_inner(), Rate(0.25));
        assert_eq!(Rate(1.5).check(), Err(BadRate));
        assert_eq!(Rate(f64::NAN).validate(), Err(BadRate));
        assert_eq!(Checked::<Rate>::default(), Rate(0.0).check().unwrap());
    }
}
