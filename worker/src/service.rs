//! The worker API (`fovea.worker.v1.Worker`) over an [`EngineHandle`]: the coordinator submits
//! jobs, streams their tokens, aborts them and watches the worker's load over gRPC.
//!
//! Jobs arrive as token ids and encoded images (the coordinator owns templates, text and stop
//! strings); this layer turns them into engine requests ([`crate::job`]: images decoded here or
//! fetched from vision workers), submits them and forwards their events (with each token's log
//! probabilities when the job asks for them). A job whose caller goes away is cancelled, which
//! frees its KV blocks.
//!
//! A job with a `kv_transfer_id` (decode role) reserves its prompt's blocks and waits for a
//! prefill worker to push them ([`crate::kv_receiver`]); a prefill worker refuses Generate.
//!
//! Shutting down drains ([`crate::node::WorkerNode::serve`] sets [`WorkerService::draining`]):
//! new jobs are refused with UNAVAILABLE, running ones finish, load reports say DRAINING and end
//! once the engine is idle, and then the server stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fovea_model::logprobs::TokenLogprobs;
use fovea_proto::v1::{
    FinishReason as WireFinishReason, TokenLogprob as WireTokenLogprob,
    TokenLogprobs as WireTokenLogprobs,
};
use fovea_proto::worker::v1::worker_server::Worker;
use fovea_proto::worker::v1::{
    AbortRequest, AbortResponse, DescribeRequest, GenerateEvent, GenerateFinished, GenerateJob,
    GeneratedTokens, WatchLoadRequest, WorkerInfo, WorkerLoad, WorkerRole, generate_event,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::RequestError;
use crate::event::{Completion, Event, FinishReason};
use crate::handle::EngineHandle;
use crate::job::{Images, JobContext, engine_request};
use crate::kv_receiver::AwaitedTransfers;
use crate::load_report::{LoadReports, load_reports};
use crate::request::RequestId;

/// A running job: the engine's id for it, and a signal that fires once its final event is out
/// (its KV blocks are free by then).
struct RunningJob {
    id: RequestId,
    done: Option<oneshot::Receiver<()>>,
}

/// The `Worker` service.
pub struct WorkerService {
    engine: EngineHandle,
    jobs: JobContext,
    info: WorkerInfo,
    running: Arc<Mutex<HashMap<String, RunningJob>>>,
    awaited: AwaitedTransfers,
    /// Set when the worker starts draining.
    draining: Arc<watch::Sender<bool>>,
}

impl WorkerService {
    /// Serves `engine`, turning jobs into requests with `jobs`, describing itself as `info`
    /// (whose role decides which jobs it takes), expecting KV transfers in `awaited`.
    pub fn new(
        engine: EngineHandle,
        jobs: JobContext,
        info: WorkerInfo,
        awaited: AwaitedTransfers,
    ) -> Self {
        WorkerService {
            engine,
            jobs,
            info,
            running: Arc::default(),
            awaited,
            draining: Arc::new(watch::Sender::new(false)),
        }
    }

    /// The switch that starts draining: once it says `true`, new jobs are refused and load
    /// reports say DRAINING.
    pub fn draining(&self) -> Arc<watch::Sender<bool>> {
        Arc::clone(&self.draining)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningJob>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One token's log probabilities as the worker API carries them.
fn wire_logprobs(logprobs: &TokenLogprobs) -> WireTokenLogprobs {
    WireTokenLogprobs {
        logprob: logprobs.logprob,
        top: logprobs
            .top
            .iter()
            .map(|entry| WireTokenLogprob {
                token_id: entry.token_id,
                logprob: entry.logprob,
            })
            .collect(),
    }
}

fn finished_event(completion: &Completion) -> GenerateEvent {
    let given_back = matches!(
        completion.reason,
        FinishReason::Error(RequestError::GivenBack)
    );
    let (reason, error) = match &completion.reason {
        FinishReason::Stop => (WireFinishReason::Stop, String::new()),
        FinishReason::Length => (WireFinishReason::Length, String::new()),
        FinishReason::Cancelled => (WireFinishReason::Cancelled, String::new()),
        FinishReason::Error(e) => (WireFinishReason::Error, e.to_string()),
    };
    let micros = |d: Duration| d.as_micros() as u64;
    let timings = &completion.timings;
    GenerateEvent {
        event: Some(generate_event::Event::Finished(GenerateFinished {
            finish_reason: reason as i32,
            error,
            cached_tokens: completion.usage.cached_tokens as u32,
            completion_tokens: completion.usage.completion_tokens as u32,
            queue_us: micros(timings.queue),
            vision_us: 0,
            prefill_us: timings
                .time_to_first_token
                .map_or(0, |t| micros(t.saturating_sub(timings.queue))),
            decode_us: timings
                .time_to_first_token
                .map_or(0, |t| micros(timings.total.saturating_sub(t))),
            given_back,
        })),
    }
}

#[tonic::async_trait]
impl Worker for WorkerService {
    type GenerateStream = ReceiverStream<Result<GenerateEvent, Status>>;
    type WatchLoadStream = LoadReports;

    async fn generate(
        &self,
        request: Request<GenerateJob>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let job = request.into_inner();
        let job_id = job.request_id.clone();
        if self.info.role() == WorkerRole::Prefill {
            return Err(Status::failed_precondition(
                "this is a prefill worker: it takes Prefiller.Prefill jobs, not Generate",
            ));
        }
        if job_id.is_empty() {
            return Err(Status::invalid_argument("a job needs a request_id"));
        }
        if *self.draining.borrow() {
            return Err(Status::unavailable(
                "this worker is draining: it finishes its jobs and takes no new ones",
            ));
        }
        let transfer_id = job.kv_transfer_id.clone();
        let images = if transfer_id.is_empty() {
            Images::Needed
        } else {
            Images::KeysOnly
        };
        let request = engine_request(job, images, &self.jobs).await?;
        let prompt_tokens = request.prompt_ids.len();
        let (done_tx, done_rx) = oneshot::channel();
        let mut stream = {
            let mut running = self.running();
            if running.contains_key(&job_id) {
                return Err(Status::already_exists(format!(
                    "job {job_id:?} is already running"
                )));
            }
            let stream = if transfer_id.is_empty() {
                self.engine.submit(request)
            } else {
                let stream = self.engine.submit_awaiting_kv(request);
                self.awaited
                    .expect(&transfer_id, stream.id, prompt_tokens)?;
                stream
            };
            running.insert(
                job_id.clone(),
                RunningJob {
                    id: stream.id,
                    done: Some(done_rx),
                },
            );
            stream
        };
        let (tx, rx) = mpsc::channel(64);
        let (engine, running, awaited) = (
            self.engine.clone(),
            Arc::clone(&self.running),
            self.awaited.clone(),
        );
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = stream.events.recv() => event,
                    _ = tx.closed() => {
                        // The coordinator dropped the call: cancel, then wait for the engine to confirm.
                        engine.cancel(stream.id);
                        while let Some(event) = stream.events.recv().await {
                            if matches!(event, Event::Finished(_)) {
                                break;
                            }
                        }
                        break;
                    }
                };
                match event {
                    Some(Event::Token { id, logprobs, .. }) => {
                        let tokens = GenerateEvent {
                            event: Some(generate_event::Event::Tokens(GeneratedTokens {
                                token_ids: vec![id],
                                logprobs: logprobs.iter().map(wire_logprobs).collect(),
                            })),
                        };
                        let _ = tx.send(Ok(tokens)).await;
                    }
                    Some(Event::PromptKv(_)) => {}
                    Some(Event::Finished(completion)) => {
                        let _ = tx.send(Ok(finished_event(&completion))).await;
                        break;
                    }
                    None => break,
                }
            }
            if !transfer_id.is_empty() {
                awaited.forget(&transfer_id);
            }
            running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&job_id);
            let _ = done_tx.send(());
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn abort(
        &self,
        request: Request<AbortRequest>,
    ) -> Result<Response<AbortResponse>, Status> {
        let request_id = request.into_inner().request_id;
        let job = self
            .running()
            .get_mut(&request_id)
            .map(|job| (job.id, job.done.take()));
        let Some((id, done)) = job else {
            return Ok(Response::new(AbortResponse {
                found: false,
                freed_kv_blocks: 0,
            }));
        };
        let free_before = self.engine.stats().free_blocks;
        self.engine.cancel(id);
        if let Some(done) = done {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
        let freed = self.engine.stats().free_blocks.saturating_sub(free_before);
        Ok(Response::new(AbortResponse {
            found: true,
            freed_kv_blocks: freed as u32,
        }))
    }

    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<WorkerInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn watch_load(
        &self,
        request: Request<WatchLoadRequest>,
    ) -> Result<Response<Self::WatchLoadStream>, Status> {
        let (engine, preparing) = (self.engine.clone(), Arc::clone(&self.jobs.preparing));
        let reports = load_reports(request.into_inner(), self.draining.subscribe(), move || {
            let stats = engine.stats();
            let (preparing_jobs, preparing_tokens) = preparing.count();
            WorkerLoad {
                running_requests: stats.running as u32,
                awaiting_kv_requests: stats.receiving as u32,
                queued_requests: (stats.waiting + preparing_jobs) as u32,
                preparing_requests: preparing_jobs as u32,
                queued_tokens: (stats.queued_tokens + preparing_tokens) as u64,
                free_kv_blocks: stats.free_blocks as u32,
                total_kv_blocks: stats.total_blocks as u32,
                steps_completed: stats.steps,
                ..WorkerLoad::default()
            }
        })?;
        Ok(Response::new(reports))
    }
}
