//! The benchmark's results, computed and named as vLLM's `benchmark_serving` reports them, so
//! runs of both can be compared side by side.

use std::fmt;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::runner::{Outcome, RequestRecord};

/// Latency targets for goodput; a request meets them when it meets every one that is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

/// Mean, median and 99th percentile of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyStats {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
}

impl LatencyStats {
    fn of(mut values_ms: Vec<f64>) -> LatencyStats {
        if values_ms.is_empty() {
            return LatencyStats::default();
        }
        values_ms.sort_by(f64::total_cmp);
        LatencyStats {
            mean_ms: values_ms.iter().sum::<f64>() / values_ms.len() as f64,
            median_ms: percentile(&values_ms, 50.0),
            p99_ms: percentile(&values_ms, 99.0),
        }
    }
}

/// The `p`th percentile of sorted, non-empty `values`, interpolated linearly as numpy does.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Time per output token after the first, or `None` for a single-token completion.
fn tpot_ms(record: &RequestRecord) -> Option<f64> {
    (record.output_tokens > 1).then(|| ms(record.latency - record.ttft) / f64::from(record.output_tokens - 1))
}

/// A whole run's results. As JSON, its keys are vLLM's: `completed`, `request_throughput`,
/// `mean_ttft_ms`, `p99_itl_ms` and so on.
#[derive(Debug, Clone)]
pub struct Summary {
    pub completed: usize,
    pub failed: usize,
    /// Wall time of the run, in seconds.
    pub duration: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Generated tokens per second.
    pub output_throughput: f64,
    /// Prompt and generated tokens per second.
    pub total_token_throughput: f64,
    /// Requests per second that met every SLO; absent without SLOs.
    pub request_goodput: Option<f64>,
    /// Time to first token.
    pub ttft: LatencyStats,
    /// Time per output token, the first excluded.
    pub tpot: LatencyStats,
    /// Inter-token latency: gaps between successive deltas.
    pub itl: LatencyStats,
    /// End-to-end latency.
    pub e2el: LatencyStats,
    /// The first few failures' messages.
    pub errors: Vec<String>,
}

/// Failure messages kept in a summary.
const KEPT_ERRORS: usize = 8;

impl Summary {
    /// Summarizes `outcomes` of a run that took `duration`, counting goodput against `slo`.
    pub fn new(outcomes: &[Outcome], duration: Duration, slo: Slo) -> Summary {
        let records: Vec<&RequestRecord> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        let errors: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .map(|e| e.to_string())
            .collect();
        let seconds = duration.as_secs_f64().max(f64::MIN_POSITIVE);
        let total_input_tokens: u64 = records.iter().map(|r| u64::from(r.prompt_tokens)).sum();
        let total_output_tokens: u64 = records.iter().map(|r| u64::from(r.output_tokens)).sum();
        let meets_slo = |r: &&&RequestRecord| {
            slo.ttft_ms.is_none_or(|limit| ms(r.ttft) <= limit)
                && slo.tpot_ms.is_none_or(|limit| tpot_ms(r).unwrap_or(0.0) <= limit)
        };
        let has_slo = slo.ttft_ms.is_some() || slo.tpot_ms.is_some();
        Summary {
            completed: records.len(),
            failed: errors.len(),
            duration: seconds,
            total_input_tokens,
            total_output_tokens,
            request_throughput: records.len() as f64 / seconds,
            output_throughput: total_output_tokens as f64 / seconds,
            total_token_throughput: (total_input_tokens + total_output_tokens) as f64 / seconds,
            request_goodput: has_slo.then(|| records.iter().filter(meets_slo).count() as f64 / seconds),
            ttft: LatencyStats::of(records.iter().map(|r| ms(r.ttft)).collect()),
            tpot: LatencyStats::of(records.iter().filter_map(|r| tpot_ms(r)).collect()),
            itl: LatencyStats::of(records.iter().flat_map(|r| r.itls.iter().map(|&gap| ms(gap))).collect()),
            e2el: LatencyStats::of(records.iter().map(|r| ms(r.latency)).collect()),
            errors: errors.into_iter().take(KEPT_ERRORS).collect(),
        }
    }
}

impl Serialize for Summary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("completed", &self.completed)?;
        map.serialize_entry("failed", &self.failed)?;
        map.serialize_entry("duration", &self.duration)?;
        map.serialize_entry("total_input_tokens", &self.total_input_tokens)?;
        map.serialize_entry("total_output_tokens", &self.total_output_tokens)?;
        map.serialize_entry("request_throughput", &self.request_throughput)?;
        map.serialize_entry("request_goodput", &self.request_goodput)?;
        map.serialize_entry("output_throughput", &self.output_throughput)?;
        map.serialize_entry("total_token_throughput", &self.total_token_throughput)?;
        for (name, stats) in [
            ("ttft", &self.ttft),
            ("tpot", &self.tpot),
            ("itl", &self.itl),
            ("e2el", &self.e2el),
        ] {
            map.serialize_entry(&format!("mean_{name}_ms"), &stats.mean_ms)?;
            map.serialize_entry(&format!("median_{name}_ms"), &stats.median_ms)?;
            map.serialize_entry(&format!("p99_{name}_ms"), &stats.p99_ms)?;
        }
        map.serialize_entry("errors", &self.errors)?;
        map.end()
    }
}

/// A titled rule, 50 columns wide, as vLLM prints them.
fn rule(f: &mut fmt::Formatter<'_>, fill: char, title: &str) -> fmt::Result {
    let side = 50usize.saturating_sub(title.len());
    let left: String = std::iter::repeat_n(fill, side / 2).collect();
    let right: String = std::iter::repeat_n(fill, side - side / 2).collect();
    writeln!(f, "{left}{title}{right}")
}

fn row(f: &mut fmt::Formatter<'_>, label: &str, value: impl fmt::Display) -> fmt::Result {
    writeln!(f, "{:<40} {value}", format!("{label}:"))
}

fn latency(f: &mut fmt::Formatter<'_>, title: &str, short: &str, stats: &LatencyStats) -> fmt::Result {
    rule(f, '-', title)?;
    row(f, &format!("Mean {short} (ms)"), format_args!("{:.2}", stats.mean_ms))?;
    row(
        f,
        &format!("Median {short} (ms)"),
        format_args!("{:.2}", stats.median_ms),
    )?;
    row(f, &format!("P99 {short} (ms)"), format_args!("{:.2}", stats.p99_ms))
}

impl fmt::Display for Summary {
    /// The report in vLLM's layout.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        rule(f, '=', " Serving Benchmark Result ")?;
        row(f, "Successful requests", self.completed)?;
        row(f, "Failed requests", self.failed)?;
        row(f, "Benchmark duration (s)", format_args!("{:.2}", self.duration))?;
        row(f, "Total input tokens", self.total_input_tokens)?;
        row(f, "Total generated tokens", self.total_output_tokens)?;
        row(
            f,
            "Request throughput (req/s)",
            format_args!("{:.2}", self.request_throughput),
        )?;
        if let Some(goodput) = self.request_goodput {
            row(f, "Request goodput (req/s)", format_args!("{goodput:.2}"))?;
        }
        row(
            f,
            "Output token throughput (tok/s)",
            format_args!("{:.2}", self.output_throughput),
        )?;
        row(
            f,
            "Total Token throughput (tok/s)",
            format_args!("{:.2}", self.total_token_throughput),
        )?;
        latency(f, "Time to First Token", "TTFT", &self.ttft)?;
        latency(f, "Time per Output Token (excl. 1st token)", "TPOT", &self.tpot)?;
        latency(f, "Inter-token Latency", "ITL", &self.itl)?;
        latency(f, "End-to-end Latency", "E2EL", &self.e2el)?;
        for error in &self.errors {
            writeln!(f, "error: {error}")?;
        }
        rule(f, '=', "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ttft_ms: u64, latency_ms: u64, output_tokens: u32) -> Outcome {
        Ok(RequestRecord {
            prompt_tokens: 10,
            output_tokens,
            ttft: Duration::from_millis(ttft_ms),
            itls: vec![Duration::from_millis(10); output_tokens.saturating_sub(1) as usize],
            latency: Duration::from_millis(latency_ms),
        })
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 50.0), 2.5);
        assert!((percentile(&sorted, 99.0) - 3.97).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn goodput_counts_only_requests_meeting_every_slo() {
        // TPOT: (110 - 20) / 9 = 10 ms and (1000 - 500) / 9 = 55.6 ms.
        let outcomes = [record(20, 110, 10), record(500, 1000, 10)];
        let slo = Slo {
            ttft_ms: Some(100.0),
            tpot_ms: Some(20.0),
        };
        let summary = Summary::new(&outcomes, Duration::from_secs(2), slo);
        assert_eq!(summary.completed, 2);
        assert_eq!(summary.request_goodput, Some(0.5));
        assert_eq!(summary.request_throughput, 1.0);
        assert_eq!(summary.total_output_tokens, 20);
        assert!((summary.tpot.mean_ms - (10.0 + 500.0 / 9.0) / 2.0).abs() < 1e-9);
        assert_eq!(summary.itl.median_ms, 10.0);
    }
}
