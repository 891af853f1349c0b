//! Latency summaries (hdrhistogram) and medians over repeated runs.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Percentiles of one latency series, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    /// Samples.
    pub n: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// Records latencies with 3 significant digits from 1 µs to 100 s.
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty recorder.
    pub fn new() -> Self {
        Latencies(Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds"))
    }

    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.max(1));
    }

    /// The summary (zeros when empty).
    pub fn summary(&self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        let q = |q: f64| self.0.value_at_quantile(q) as f64;
        Summary {
            n: self.0.len(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            max_us: self.0.max() as f64,
        }
    }
}

/// The median of `xs` (the mean of the middle two for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Field-wise median of several summaries.
pub fn median_summary(s: &[Summary]) -> Summary {
    let f = |g: fn(&Summary) -> f64| median(&s.iter().map(g).collect::<Vec<_>>()).unwrap_or(0.0);
    Summary {
        n: s.iter().map(|x| x.n).sum(),
        p50_us: f(|x| x.p50_us),
        p90_us: f(|x| x.p90_us),
        p99_us: f(|x| x.p99_us),
        max_us: f(|x| x.max_us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_series() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.n, 1000);
        assert!((s.p50_us - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p90_us - 900.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() <= 1.0, "{s:?}");
        assert_eq!(Latencies::new().summary(), Summary::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        let a = Summary {
            n: 10,
            p50_us: 1.0,
            p90_us: 2.0,
            p99_us: 3.0,
            max_us: 9.0,
        };
        let b = Summary {
            n: 10,
            p50_us: 3.0,
            p90_us: 4.0,
            p99_us: 5.0,
            max_us: 7.0,
        };
        let c = Summary {
            n: 10,
            p50_us: 2.0,
            p90_us: 9.0,
            p99_us: 4.0,
            max_us: 8.0,
        };
        let m = median_summary(&[a, b, c]);
        assert_eq!(
            m,
            Summary {
                n: 30,
                p50_us: 2.0,
                p90_us: 4.0,
                p99_us: 4.0,
                max_us: 8.0
            }
        );
    }
}
