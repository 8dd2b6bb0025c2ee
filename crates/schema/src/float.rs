//! Non-finite numbers on disk: `serde_json` writes NaN as `null`; these read
//! `null` back as NaN instead of failing.

use serde::{Deserialize, Deserializer};

/// `null` reads as NaN.
pub(crate) fn nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A pair whose `null`s read as NaN.
pub(crate) fn nan2<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 2], D::Error> {
    let v = <[Option<f64>; 2]>::deserialize(d)?;
    Ok([v[0].unwrap_or(f64::NAN), v[1].unwrap_or(f64::NAN)])
}

/// A field present in the file (`null` for NaN); an absent one stays `None`
/// through `#[serde(default)]`.
pub(crate) fn nan_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    nan(d).map(Some)
}

/// A pair present in the file; an absent one stays `None`.
pub(crate) fn nan2_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f64; 2]>, D::Error> {
    nan2(d).map(Some)
}
