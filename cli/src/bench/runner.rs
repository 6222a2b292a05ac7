//! Sends a workload to the server at the asked pace and times every token as it arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fovea_client::{Client, ClientError, FinishReason, GenerationEvent};
use fovea_proto::v1::GenerateRequest;
use indicatif::ProgressBar;
use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;

use super::workload::{BenchRequest, RequestKind};

/// How requests are released.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Most requests in flight at once; `None`: no limit.
    pub concurrency: Option<usize>,
    /// Mean arrivals per second, Poisson-distributed; `None`: all at once (within `concurrency`).
    pub request_rate: Option<f64>,
}

/// What one request measured, from the moment it was sent.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Prompt tokens, as the server counted them.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
    /// Until the first token arrived.
    pub ttft: Duration,
    /// Gaps between successive token deltas.
    pub itls: Vec<Duration>,
    /// Until the final message arrived.
    pub latency: Duration,
}

/// Why a request did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RequestFailure {
    /// The call failed or the stream broke.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server ended the generation early.
    #[error("generation ended with {reason:?}: {message}")]
    Ended {
        reason: FinishReason,
        message: String,
    },
    /// The request's task panicked or was cancelled.
    #[error("request task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A request's outcome: its kind, and its measurements or why it failed.
#[derive(Debug)]
pub struct Outcome {
    pub kind: RequestKind,
    pub result: Result<RequestRecord, RequestFailure>,
}

/// Sends every request, paced by `pace`, and returns each one's outcome in sending order and
/// the whole run's duration.
pub async fn run(
    client: &Client,
    requests: Vec<BenchRequest>,
    pace: Pace,
    rng: &mut StdRng,
    progress: &ProgressBar,
) -> (Vec<Outcome>, Duration) {
    let slots = Arc::new(Semaphore::new(
        pace.concurrency.unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for BenchRequest { kind, request } in requests {
        if let Some(rate) = pace.request_rate {
            tokio::time::sleep(exponential_gap(rate, rng)).await;
        }
        let (client, slots, progress) = (client.clone(), Arc::clone(&slots), progress.clone());
        let task = tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let result = measure(&client, request).await;
            progress.inc(1);
            result
        });
        tasks.push((kind, task));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for (kind, task) in tasks {
        let result = task.await.unwrap_or_else(|e| Err(e.into()));
        outcomes.push(Outcome { kind, result });
    }
    (outcomes, started.elapsed())
}

/// Time until the next Poisson arrival at `rate` per second.
fn exponential_gap(rate: f64, rng: &mut StdRng) -> Duration {
    let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-uniform.ln() / rate)
}

/// Runs one generation, timing each delta that carries tokens.
async fn measure(
    client: &Client,
    request: GenerateRequest,
) -> Result<RequestRecord, RequestFailure> {
    let sent = Instant::now();
    let mut stream = client.generate(request).await?;
    let (mut ttft, mut last_token, mut itls) = (None, sent, Vec::new());
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Delta { token_ids, .. } if !token_ids.is_empty() => {
                let now = Instant::now();
                match ttft {
                    None => ttft = Some(now - sent),
                    Some(_) => itls.push(now - last_token),
                }
                last_token = now;
            }
            GenerationEvent::Delta { .. } => {}
            GenerationEvent::Finished(finished) => {
                if let FinishReason::Error | FinishReason::Cancelled = finished.finish_reason {
                    return Err(RequestFailure::Ended {
                        reason: finished.finish_reason,
                        message: finished.error.unwrap_or_default(),
                    });
                }
                return Ok(RequestRecord {
                    prompt_tokens: finished.usage.prompt_tokens,
                    output_tokens: finished.usage.completion_tokens,
                    ttft: ttft.unwrap_or_else(|| sent.elapsed()),
                    itls,
                    latency: sent.elapsed(),
                });
            }
        }
    }
    Err(ClientError::Protocol("the stream ended without a final message".into()).into())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn poisson_gaps_average_the_inverse_rate() {
        let mut rng = StdRng::seed_from_u64(1);
        let samples = 20_000;
        let total: f64 = (0..samples)
            .map(|_| exponential_gap(4.0, &mut rng).as_secs_f64())
            .sum();
        let mean = total / f64::from(samples);
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
    }
}
