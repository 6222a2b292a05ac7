//! The public `fovea.v1.Generation` service: validate at the edge, admit, hand the job to a
//! worker over the worker API, and turn the worker's tokens into the client's stream.
//!
//! Every accepted request ends with exactly one `GenerateFinal`: the forwarding task owns the
//! stream and every way out of its loop sends one (or finds the client gone). A client that
//! disconnects, or whose deadline passes, has its worker job aborted at once, which frees its KV
//! blocks. Which workers run the job is the [`JobSplitter`]'s choice; a decode worker lost
//! mid-stream is replaced by [`ResumableEvents`] without the client noticing; a worker that cannot
//! be reached is set aside and the job offered to another, so a worker that just died costs no
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fovea_model::input::RequestPreparer;
use fovea_model::text::{Mode, TextTokenizer};
use fovea_proto::v1::generation_server::Generation;
use fovea_proto::v1::{
    self as wire, FinishReason, GenerateFinal, GenerateRequest, GenerateResponse,
    ListModelsRequest, ListModelsResponse, ModelInfo, TokenDelta, TokenizeRequest,
    TokenizeResponse, generate_response,
};
use fovea_proto::worker::v1::{self as worker_wire, GenerateJob, GeneratedTokens, generate_event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::admission::{Admission, AdmissionPermit};
use crate::output::{Delta, OutputShaper, Segment};
use crate::replay::ResumableEvents;
use crate::split::JobSplitter;
use crate::validation::{Limits, ValidRequest, chat_messages, mode, validate};

/// What the service knows about the model it serves.
#[derive(Debug, Clone)]
pub struct ModelDescription {
    pub name: String,
    pub min_image_tokens: usize,
    pub max_image_tokens: usize,
    /// The model's end-of-turn tokens.
    pub eos_token_ids: Vec<u32>,
}

/// The `Generation` service.
pub struct GenerationService {
    preparer: Arc<RequestPreparer>,
    limits: Limits,
    admission: Admission,
    splitter: Arc<JobSplitter>,
    model: ModelDescription,
    next_request: AtomicU64,
}

impl GenerationService {
    /// A service for `model`, preparing prompts with `preparer` and running them on the workers
    /// `splitter` chooses.
    pub fn new(
        preparer: Arc<RequestPreparer>,
        limits: Limits,
        admission: Admission,
        splitter: Arc<JobSplitter>,
        model: ModelDescription,
    ) -> Self {
        GenerationService {
            preparer,
            limits,
            admission,
            splitter,
            model,
            next_request: AtomicU64::new(1),
        }
    }

    /// The served model's tokenizer (the HTTP API spells out tokens with it).
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        self.preparer.tokenizer()
    }

    fn check_model(&self, name: &str) -> Result<(), Status> {
        if name.is_empty() || name == self.model.name {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "unknown model {name:?}; this server serves {:?}",
                self.model.name
            )))
        }
    }

    /// Runs `work` (image decoding, tokenizing) off the async threads.
    async fn off_thread<T: Send + 'static>(
        work: impl FnOnce() -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Status::internal(format!("request preparation failed: {e}")))?
    }
}

/// The worker job for a valid request; the model's end-of-turn tokens join the stop tokens unless
/// the client ignores them.
fn job(request_id: &str, valid: &ValidRequest, seed: u64, eos_token_ids: &[u32]) -> GenerateJob {
    let mut stop_token_ids = valid.stop_token_ids.clone();
    if !valid.ignore_eos {
        stop_token_ids.extend_from_slice(eos_token_ids);
    }
    GenerateJob {
        request_id: request_id.to_string(),
        prompt_token_ids: valid.prepared.prompt_ids.clone(),
        images: valid
            .prepared
            .images
            .iter()
            .zip(&valid.image_bytes)
            .map(|((placement, image), bytes)| worker_wire::ImageInput {
                image: Some(worker_wire::EncodedImage {
                    data: bytes.clone().into(),
                    grid_rows: image.grid_h as u32,
                    grid_cols: image.grid_w as u32,
                    ..Default::default()
                }),
                start: placement.start as u32,
                vision_worker: String::new(),
            })
            .collect(),
        sampling: Some(worker_wire::SamplingParams {
            temperature: valid.temperature,
            top_p: valid.top_p,
            top_k: valid.top_k as u32,
            seed,
            stop_token_ids,
            logprobs: valid.logprobs,
        }),
        max_tokens: valid.max_tokens as u32,
        kv_transfer_id: String::new(),
        replayed_tokens: 0,
    }
}

#[tonic::async_trait]
impl Generation for GenerationService {
    type GenerateStream = ReceiverStream<Result<GenerateResponse, Status>>;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let received = Instant::now();
        let deadline = grpc_deadline(&request);
        let request = request.into_inner();
        self.check_model(&request.model)?;
        let (preparer, limits) = (Arc::clone(&self.preparer), self.limits.clone());
        let valid = Self::off_thread(move || validate(&request, &preparer, &limits)).await?;
        let permit = self.admission.try_admit(valid.prepared.prompt_ids.len())?;
        let request_id = valid.request_id.clone().unwrap_or_else(|| {
            format!("req-{}", self.next_request.fetch_add(1, Ordering::Relaxed))
        });
        let seed = valid
            .seed
            .unwrap_or_else(|| self.next_request.fetch_add(1, Ordering::Relaxed));
        let job = job(&request_id, &valid, seed, &self.model.eos_token_ids);
        let events = ResumableEvents::start(Arc::clone(&self.splitter), job).await?;
        let (tx, rx) = mpsc::channel(64);
        let first_segment = if valid.mode == Mode::Think {
            Segment::Reasoning
        } else {
            Segment::Answer
        };
        let forward = Forward {
            request_id,
            seed,
            events,
            tx,
            shaper: Some(OutputShaper::new(
                Arc::clone(self.preparer.tokenizer()),
                first_segment,
                valid.stop.clone(),
            )),
            logprobs: valid.logprobs.is_some(),
            usage: wire::Usage {
                prompt_tokens: valid.prepared.prompt_ids.len() as u32,
                image_tokens: valid.image_tokens() as u32,
                ..Default::default()
            },
            received,
            deadline,
            _permit: permit,
        };
        tokio::spawn(forward.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: vec![ModelInfo {
                name: self.model.name.clone(),
                is_default: true,
                context_length: self.limits.context_length as u32,
                min_image_tokens: self.model.min_image_tokens as u32,
                max_image_tokens: self.model.max_image_tokens as u32,
            }],
        }))
    }

    async fn tokenize(
        &self,
        request: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        let request = request.into_inner();
        self.check_model(&request.model)?;
        let (preparer, limits) = (Arc::clone(&self.preparer), self.limits.clone());
        Self::off_thread(move || {
            let (messages, images) = chat_messages(&request.messages, &limits)?;
            let prepared = preparer
                .prepare(&messages, &images, mode(request.mode()))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let images: Vec<wire::ImagePlacement> = prepared
                .images
                .iter()
                .map(|(placement, image)| wire::ImagePlacement {
                    start: placement.start as u32,
                    tokens: placement.len as u32,
                    grid_rows: image.grid_h as u32,
                    grid_cols: image.grid_w as u32,
                })
                .collect();
            Ok(Response::new(TokenizeResponse {
                prompt_tokens: prepared.prompt_ids.len() as u32,
                image_tokens: images.iter().map(|i| i.tokens).sum(),
                token_ids: prepared.prompt_ids,
                images,
            }))
        })
        .await
    }
}

/// The client's deadline, from the `grpc-timeout` header.
fn grpc_deadline<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(Instant::now() + timeout)
}

/// One request's forwarding task: worker events in, client messages out.
struct Forward {
    request_id: String,
    seed: u64,
    /// The worker job's events, continued on another worker if one is lost.
    events: ResumableEvents,
    tx: mpsc::Sender<Result<GenerateResponse, Status>>,
    /// Taken when the worker finishes, to flush held text.
    shaper: Option<OutputShaper>,
    /// Whether the client asked for log probabilities: then each worker token comes with one entry.
    logprobs: bool,
    usage: wire::Usage,
    received: Instant,
    deadline: Option<Instant>,
    _permit: AdmissionPermit,
}

/// How the forwarding loop ended.
enum Outcome {
    /// The worker finished the job.
    Finished(worker_wire::GenerateFinished),
    /// A stop string matched: the worker job is aborted.
    StopString(String),
    /// The client went away or its deadline passed: the worker job is aborted.
    Abandoned(FinishReason, String),
    /// The worker's stream broke.
    WorkerLost(String),
}

impl Forward {
    async fn run(mut self) {
        let mut first_token_at = None;
        let deadline = self.deadline.map(tokio::time::Instant::from_std);
        let outcome = loop {
            let next = tokio::select! {
                next = self.events.message() => next,
                _ = self.tx.closed() => break Outcome::Abandoned(FinishReason::Cancelled, "the client cancelled".into()),
                _ = sleep_until(deadline) => break Outcome::Abandoned(FinishReason::Cancelled, "the request's deadline passed".into()),
            };
            match next {
                Ok(Some(event)) => match event.event {
                    Some(generate_event::Event::Tokens(tokens)) => {
                        first_token_at.get_or_insert_with(Instant::now);
                        match self.forward_tokens(tokens).await {
                            Ok(None) => {}
                            Ok(Some(stop)) => break Outcome::StopString(stop),
                            Err(why) => break Outcome::WorkerLost(why),
                        }
                    }
                    Some(generate_event::Event::Finished(finished)) => {
                        break Outcome::Finished(finished);
                    }
                    None => {}
                },
                Ok(None) => {
                    break Outcome::WorkerLost(
                        "the worker ended the stream without a final event".into(),
                    );
                }
                Err(status) => {
                    break Outcome::WorkerLost(format!("the worker failed: {}", status.message()));
                }
            }
        };
        let (reason, error, matched_stop, queue_us) = match outcome {
            Outcome::Finished(finished) => {
                self.usage.cached_tokens = finished.cached_tokens;
                self.send_rest().await;
                (
                    finished.finish_reason(),
                    finished.error,
                    String::new(),
                    finished.queue_us,
                )
            }
            Outcome::StopString(stop) => {
                self.events.abort().await;
                (FinishReason::Stop, String::new(), stop, 0)
            }
            Outcome::Abandoned(reason, why) => {
                self.events.abort().await;
                (reason, why, String::new(), 0)
            }
            Outcome::WorkerLost(why) => (FinishReason::Error, why, String::new(), 0),
        };
        let timings = wire::Timings {
            queue_us,
            time_to_first_token_us: first_token_at
                .map_or(0, |t| (t - self.received).as_micros() as u64),
            total_us: self.received.elapsed().as_micros() as u64,
        };
        let last = GenerateFinal {
            request_id: self.request_id.clone(),
            finish_reason: reason as i32,
            error,
            matched_stop,
            seed: self.seed,
            usage: Some(self.usage),
            timings: Some(timings),
        };
        let _ = self
            .tx
            .send(Ok(response(generate_response::Event::Final(last))))
            .await;
    }

    /// Sends the deltas of `tokens`, each with its token's log probabilities when asked for;
    /// returns the stop string one of them completed, if any, or why the tokens could not be
    /// decoded.
    async fn forward_tokens(&mut self, tokens: GeneratedTokens) -> Result<Option<String>, String> {
        let GeneratedTokens {
            token_ids,
            logprobs,
        } = tokens;
        let expected_logprobs = if self.logprobs { token_ids.len() } else { 0 };
        if logprobs.len() != expected_logprobs {
            return Err(format!(
                "the worker sent {} logprobs entries for {} tokens (expected {expected_logprobs})",
                logprobs.len(),
                token_ids.len()
            ));
        }
        let Some(shaper) = self.shaper.as_mut() else {
            return Ok(None);
        };
        let steps = token_ids
            .iter()
            .map(|&token| shaper.push(token))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the worker sent an undecodable token: {e}"))?;
        let mut logprobs = logprobs.into_iter();
        for step in steps {
            self.usage.completion_tokens += 1;
            if step.delta.segment == Segment::Reasoning {
                self.usage.reasoning_tokens += 1;
            }
            self.send_delta(step.delta, logprobs.next()).await;
            if step.stopped_at.is_some() {
                return Ok(step.stopped_at);
            }
        }
        Ok(None)
    }

    /// Sends the text still held when the worker finished.
    async fn send_rest(&mut self) {
        if let Some(delta) = self.shaper.take().and_then(OutputShaper::finish) {
            self.send_delta(delta, None).await;
        }
    }

    /// Sends `delta` with the log probabilities of its token, if it has one and they were asked for.
    async fn send_delta(&self, delta: Delta, logprobs: Option<wire::TokenLogprobs>) {
        let segment = match delta.segment {
            Segment::Reasoning => wire::Segment::Reasoning,
            Segment::Answer => wire::Segment::Answer,
        };
        let message = TokenDelta {
            token_ids: delta.token_ids,
            text: delta.text,
            segment: segment as i32,
            logprobs: logprobs.into_iter().collect(),
        };
        let _ = self
            .tx
            .send(Ok(response(generate_response::Event::Delta(message))))
            .await;
    }
}

fn response(event: generate_response::Event) -> GenerateResponse {
    GenerateResponse { event: Some(event) }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
