//! The benchmark's results, computed and named as vLLM's `benchmark_serving` reports them, so
//! runs of both can be compared side by side; then the same for each kind of request (text,
//! image), so that a mix's text requests can be judged apart from its image requests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::runner::{Outcome, RequestRecord};
use super::workload::RequestKind;

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
    (record.output_tokens > 1)
        .then(|| ms(record.latency - record.ttft) / f64::from(record.output_tokens - 1))
}

/// Latency distributions of a set of requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latencies {
    /// Time to first token.
    pub ttft: LatencyStats,
    /// Time per output token, the first excluded.
    pub tpot: LatencyStats,
    /// Inter-token latency: gaps between successive deltas.
    pub itl: LatencyStats,
    /// End-to-end latency.
    pub e2el: LatencyStats,
}

impl Latencies {
    fn of(records: &[&RequestRecord]) -> Latencies {
        Latencies {
            ttft: LatencyStats::of(records.iter().map(|r| ms(r.ttft)).collect()),
            tpot: LatencyStats::of(records.iter().filter_map(|r| tpot_ms(r)).collect()),
            itl: LatencyStats::of(
                records
                    .iter()
                    .flat_map(|r| r.itls.iter().map(|&gap| ms(gap)))
                    .collect(),
            ),
            e2el: LatencyStats::of(records.iter().map(|r| ms(r.latency)).collect()),
        }
    }

    /// Each distribution with its short name, as vLLM's keys spell it.
    fn named(&self) -> [(&'static str, &LatencyStats); 4] {
        [
            ("ttft", &self.ttft),
            ("tpot", &self.tpot),
            ("itl", &self.itl),
            ("e2el", &self.e2el),
        ]
    }
}

/// Counts, throughputs, goodput and latencies of some of a run's requests (all of them, or one
/// kind's); rates are per second of the whole run, so the kinds' rates add up to the run's.
#[derive(Debug, Clone)]
pub struct Tally {
    pub completed: usize,
    pub failed: usize,
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
    pub latencies: Latencies,
}

impl Tally {
    /// Tallies `outcomes` of a run that took `seconds`, counting goodput against `slo`.
    fn of<'a>(outcomes: impl Iterator<Item = &'a Outcome>, seconds: f64, slo: Slo) -> Tally {
        let (mut records, mut failed) = (Vec::new(), 0);
        for outcome in outcomes {
            match &outcome.result {
                Ok(record) => records.push(record),
                Err(_) => failed += 1,
            }
        }
        let total_input_tokens: u64 = records.iter().map(|r| u64::from(r.prompt_tokens)).sum();
        let total_output_tokens: u64 = records.iter().map(|r| u64::from(r.output_tokens)).sum();
        let meets_slo = |r: &&&RequestRecord| {
            slo.ttft_ms.is_none_or(|limit| ms(r.ttft) <= limit)
                && slo
                    .tpot_ms
                    .is_none_or(|limit| tpot_ms(r).unwrap_or(0.0) <= limit)
        };
        let has_slo = slo.ttft_ms.is_some() || slo.tpot_ms.is_some();
        Tally {
            completed: records.len(),
            failed,
            total_input_tokens,
            total_output_tokens,
            request_throughput: records.len() as f64 / seconds,
            output_throughput: total_output_tokens as f64 / seconds,
            total_token_throughput: (total_input_tokens + total_output_tokens) as f64 / seconds,
            request_goodput: has_slo
                .then(|| records.iter().filter(meets_slo).count() as f64 / seconds),
            latencies: Latencies::of(&records),
        }
    }

    /// Writes the tally's entries under vLLM's keys into `map`.
    fn serialize_entries<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("completed", &self.completed)?;
        map.serialize_entry("failed", &self.failed)?;
        map.serialize_entry("total_input_tokens", &self.total_input_tokens)?;
        map.serialize_entry("total_output_tokens", &self.total_output_tokens)?;
        map.serialize_entry("request_throughput", &self.request_throughput)?;
        map.serialize_entry("request_goodput", &self.request_goodput)?;
        map.serialize_entry("output_throughput", &self.output_throughput)?;
        map.serialize_entry("total_token_throughput", &self.total_token_throughput)?;
        for (name, stats) in self.latencies.named() {
            map.serialize_entry(&format!("mean_{name}_ms"), &stats.mean_ms)?;
            map.serialize_entry(&format!("median_{name}_ms"), &stats.median_ms)?;
            map.serialize_entry(&format!("p99_{name}_ms"), &stats.p99_ms)?;
        }
        Ok(())
    }
}

impl Serialize for Tally {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        self.serialize_entries(&mut map)?;
        map.end()
    }
}

/// A whole run's results: the totals, and the same per kind of request. As JSON, the totals'
/// keys are vLLM's (`completed`, `request_throughput`, `mean_ttft_ms`, `p99_itl_ms` and so on),
/// with `duration`, `by_kind` (`{"text": {...}, "image": {...}}`, the same keys for each kind
/// sent) and `errors` beside them.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Wall time of the run, in seconds.
    pub duration: f64,
    pub totals: Tally,
    /// Each kind of request sent, tallied alone.
    pub by_kind: BTreeMap<RequestKind, Tally>,
    /// The first few failures' messages.
    pub errors: Vec<String>,
}

/// Failure messages kept in a summary.
const KEPT_ERRORS: usize = 8;

impl Summary {
    /// Summarizes `outcomes` of a run that took `duration`, counting goodput against `slo`.
    pub fn new(outcomes: &[Outcome], duration: Duration, slo: Slo) -> Summary {
        let seconds = duration.as_secs_f64().max(f64::MIN_POSITIVE);
        let kinds: BTreeSet<RequestKind> = outcomes.iter().map(|o| o.kind).collect();
        let by_kind = kinds
            .into_iter()
            .map(|kind| {
                let outcomes = outcomes.iter().filter(|o| o.kind == kind);
                (kind, Tally::of(outcomes, seconds, slo))
            })
            .collect();
        let errors = outcomes.iter().filter_map(|o| o.result.as_ref().err());
        Summary {
            duration: seconds,
            totals: Tally::of(outcomes.iter(), seconds, slo),
            by_kind,
            errors: errors.take(KEPT_ERRORS).map(|e| e.to_string()).collect(),
        }
    }
}

/// The per-kind tallies as a JSON object keyed by the kinds' names.
struct ByKind<'a>(&'a BTreeMap<RequestKind, Tally>);

impl Serialize for ByKind<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(kind, tally)| (kind.name(), tally)))
    }
}

impl Serialize for Summary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("duration", &self.duration)?;
        self.totals.serialize_entries(&mut map)?;
        map.serialize_entry("by_kind", &ByKind(&self.by_kind))?;
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

fn latency(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    short: &str,
    stats: &LatencyStats,
) -> fmt::Result {
    rule(f, '-', title)?;
    row(
        f,
        &format!("Mean {short} (ms)"),
        format_args!("{:.2}", stats.mean_ms),
    )?;
    row(
        f,
        &format!("Median {short} (ms)"),
        format_args!("{:.2}", stats.median_ms),
    )?;
    row(
        f,
        &format!("P99 {short} (ms)"),
        format_args!("{:.2}", stats.p99_ms),
    )
}

/// A tally's rows in vLLM's layout, with the run's duration after the counts when given.
fn tally_rows(f: &mut fmt::Formatter<'_>, tally: &Tally, duration: Option<f64>) -> fmt::Result {
    row(f, "Successful requests", tally.completed)?;
    row(f, "Failed requests", tally.failed)?;
    if let Some(duration) = duration {
        row(f, "Benchmark duration (s)", format_args!("{duration:.2}"))?;
    }
    row(f, "Total input tokens", tally.total_input_tokens)?;
    row(f, "Total generated tokens", tally.total_output_tokens)?;
    row(
        f,
        "Request throughput (req/s)",
        format_args!("{:.2}", tally.request_throughput),
    )?;
    if let Some(goodput) = tally.request_goodput {
        row(f, "Request goodput (req/s)", format_args!("{goodput:.2}"))?;
    }
    row(
        f,
        "Output token throughput (tok/s)",
        format_args!("{:.2}", tally.output_throughput),
    )?;
    row(
        f,
        "Total Token throughput (tok/s)",
        format_args!("{:.2}", tally.total_token_throughput),
    )?;
    let latencies = &tally.latencies;
    latency(f, "Time to First Token", "TTFT", &latencies.ttft)?;
    latency(
        f,
        "Time per Output Token (excl. 1st token)",
        "TPOT",
        &latencies.tpot,
    )?;
    latency(f, "Inter-token Latency", "ITL", &latencies.itl)?;
    latency(f, "End-to-end Latency", "E2EL", &latencies.e2el)
}

impl fmt::Display for Summary {
    /// The report in vLLM's layout; when the run mixed kinds of request, then each kind's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        rule(f, '=', " Serving Benchmark Result ")?;
        tally_rows(f, &self.totals, Some(self.duration))?;
        if self.by_kind.len() > 1 {
            for (kind, tally) in &self.by_kind {
                rule(f, '=', &format!(" {} requests ", kind.name()))?;
                tally_rows(f, tally, None)?;
            }
        }
        for error in &self.errors {
            writeln!(f, "error: {error}")?;
        }
        rule(f, '=', "")
    }
}

#[cfg(test)]
mod tests {
    use super::super::runner::RequestFailure;
    use super::*;

    fn record(kind: RequestKind, ttft_ms: u64, latency_ms: u64, output_tokens: u32) -> Outcome {
        let result = Ok(RequestRecord {
            prompt_tokens: 10,
            output_tokens,
            ttft: Duration::from_millis(ttft_ms),
            itls: vec![Duration::from_millis(10); output_tokens.saturating_sub(1) as usize],
            latency: Duration::from_millis(latency_ms),
        });
        Outcome { kind, result }
    }

    fn failure(kind: RequestKind) -> Outcome {
        let result = Err(RequestFailure::Ended {
            reason: fovea_client::FinishReason::Error,
            message: "worker lost".into(),
        });
        Outcome { kind, result }
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
        let outcomes = [
            record(RequestKind::Text, 20, 110, 10),
            record(RequestKind::Text, 500, 1000, 10),
        ];
        let slo = Slo {
            ttft_ms: Some(100.0),
            tpot_ms: Some(20.0),
        };
        let summary = Summary::new(&outcomes, Duration::from_secs(2), slo);
        let totals = &summary.totals;
        assert_eq!(totals.completed, 2);
        assert_eq!(totals.request_goodput, Some(0.5));
        assert_eq!(totals.request_throughput, 1.0);
        assert_eq!(totals.total_output_tokens, 20);
        assert!((totals.latencies.tpot.mean_ms - (10.0 + 500.0 / 9.0) / 2.0).abs() < 1e-9);
        assert_eq!(totals.latencies.itl.median_ms, 10.0);
    }

    #[test]
    fn each_kind_is_tallied_alone_and_the_kinds_add_up_to_the_totals() {
        let outcomes = [
            record(RequestKind::Text, 20, 110, 10),
            record(RequestKind::Image, 900, 1000, 10),
            failure(RequestKind::Image),
            record(RequestKind::Text, 40, 130, 10),
        ];
        let slo = Slo {
            ttft_ms: Some(100.0),
            tpot_ms: None,
        };
        let summary = Summary::new(&outcomes, Duration::from_secs(2), slo);
        let (text, image) = (
            &summary.by_kind[&RequestKind::Text],
            &summary.by_kind[&RequestKind::Image],
        );
        assert_eq!((text.completed, text.failed), (2, 0));
        assert_eq!((image.completed, image.failed), (1, 1));
        assert_eq!((summary.totals.completed, summary.totals.failed), (3, 1));
        assert_eq!(text.request_goodput, Some(1.0));
        assert_eq!(image.request_goodput, Some(0.0));
        assert_eq!(summary.totals.request_goodput, Some(1.0));
        assert_eq!(text.latencies.ttft.median_ms, 30.0);
        assert_eq!(image.latencies.ttft.median_ms, 900.0);
        assert_eq!(summary.errors.len(), 1);

        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["completed"], 3);
        assert_eq!(json["by_kind"]["text"]["completed"], 2);
        assert_eq!(json["by_kind"]["image"]["failed"], 1);
        assert_eq!(json["by_kind"]["image"]["median_ttft_ms"], 900.0);
        assert!(summary.to_string().contains(" image requests "));
    }
}
