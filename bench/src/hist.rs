//! Latency histograms: every sample is recorded (HdrHistogram, microseconds, 3 significant
//! digits), summarized as percentiles and exported whole as `[value_us, count]` buckets.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded exactly; slower samples are clamped to it (and counted).
const MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"),
        }
    }
}

impl Latencies {
    /// Records one sample.
    pub(crate) fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(MAX_US)
            .clamp(1, MAX_US);
        self.hist.saturating_record(us);
    }

    /// Adds every sample of `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    pub(crate) fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1), in milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return f64::NAN;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// Percentiles and the whole distribution.
    pub(crate) fn summary(&self) -> Summary {
        Summary {
            count: self.count(),
            mean_ms: if self.hist.is_empty() {
                f64::NAN
            } else {
                self.hist.mean() / 1000.0
            },
            p50_ms: self.ms(0.50),
            p90_ms: self.ms(0.90),
            p99_ms: self.ms(0.99),
            p999_ms: self.ms(0.999),
            max_ms: if self.hist.is_empty() {
                f64::NAN
            } else {
                self.hist.max() as f64 / 1000.0
            },
            buckets_us: self
                .hist
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect(),
        }
    }
}

/// A histogram's percentiles (milliseconds) and its recorded buckets.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// Samples.
    pub(crate) count: u64,
    /// Mean, ms.
    pub(crate) mean_ms: f64,
    /// Median, ms.
    pub(crate) p50_ms: f64,
    /// 90th percentile, ms.
    pub(crate) p90_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile, ms.
    pub(crate) p999_ms: f64,
    /// Slowest sample, ms.
    pub(crate) max_ms: f64,
    /// The full distribution: `[highest value of the bucket in µs, samples]`, ascending.
    pub(crate) buckets_us: Vec<[u64; 2]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_samples() {
        let mut l = Latencies::default();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 0.5).abs() < 0.002, "{}", s.p50_ms);
        assert!((s.p99_ms - 0.99).abs() < 0.002, "{}", s.p99_ms);
        assert_eq!(s.buckets_us.iter().map(|b| b[1]).sum::<u64>(), 1000);
    }
}
