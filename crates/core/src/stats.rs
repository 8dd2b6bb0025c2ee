//! The one statistic shared by evaluation and off-policy evaluation: the 95 %
//! percentile interval of bootstrap resamples, so both report intervals the
//! same way.

/// The 2.5th and 97.5th percentiles of `xs` (non-finite values dropped; NaN
/// bounds when nothing is left), by nearest rank.
pub fn percentile_interval_95(mut xs: Vec<f64>) -> [f64; 2] {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| xs[((q * (xs.len() - 1) as f64).round() as usize).min(xs.len() - 1)];
    [at(0.025), at(0.975)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_bounds_and_empty_input() {
        let xs: Vec<f64> = (0..=200).map(f64::from).collect();
        assert_eq!(percentile_interval_95(xs), [5.0, 195.0]);
        assert!(percentile_interval_95(vec![f64::NAN]).iter().all(|x| x.is_nan()));
    }
}
