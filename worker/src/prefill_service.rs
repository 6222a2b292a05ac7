//! The prefill role's service (`fovea.worker.v1.Prefiller`): runs a prompt through the engine
//! (chunked like any prompt), takes its first token and keys and values, and pushes them to the
//! decode worker's `KvTransfer.PushKv`, layer by layer in runs of blocks.
//!
//! The prompt's blocks are freed as soon as the engine has copied them out, so the prefill
//! worker's cache holds only prompts being computed. The copy is streamed through a bounded
//! channel: the sender waits whenever gRPC flow control (the decode worker's back-pressure) does.
//! Dropping the Prefill call drops the push stream, which ends the decode job with an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fovea_proto::worker::v1::kv_transfer_client::KvTransferClient;
use fovea_proto::worker::v1::prefiller_server::Prefiller;
use fovea_proto::worker::v1::{
    GeneratedTokens, KvCacheLayout, KvChunk, KvTransferHeader, KvTransferMessage,
    KvTransferTrailer, PrefillJob, PrefillResult, kv_transfer_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::error::RequestError;
use crate::event::{Event, FinishReason};
use crate::handle::EngineHandle;
use crate::job::{Images, JobContext, engine_request};
use crate::kv_handoff::PromptKv;
use crate::peers::{peer_failed, peer_status};

/// Bytes of keys plus values per KvChunk, at most (a chunk holds at least one block).
const CHUNK_BYTES: usize = 1 << 20;
/// Messages built ahead of what gRPC has sent.
const MESSAGES_AHEAD: usize = 4;

/// The `Prefiller` service.
pub struct PrefillService {
    engine: EngineHandle,
    jobs: JobContext,
    layout: KvCacheLayout,
}

impl PrefillService {
    /// Prefills on `engine`, whose cache has `layout`, turning jobs into requests with `jobs`.
    pub fn new(engine: EngineHandle, jobs: JobContext, layout: KvCacheLayout) -> Self {
        PrefillService {
            engine,
            jobs,
            layout,
        }
    }

    /// Runs the prompt: its first token, its keys and values, and the cached positions.
    async fn run_prompt(
        &self,
        request: crate::GenerateRequest,
    ) -> Result<(u32, Arc<PromptKv>, usize), Status> {
        let mut stream = self.engine.submit_prefill(request);
        let (mut first_token, mut kv) = (None, None);
        while let Some(event) = stream.events.recv().await {
            match event {
                Event::Token { id, .. } => first_token = Some(id),
                Event::PromptKv(prompt) => kv = Some(prompt),
                Event::Finished(completion) => {
                    return match (completion.reason, first_token, kv) {
                        (FinishReason::Stop | FinishReason::Length, Some(token), Some(kv)) => {
                            Ok((token, kv, completion.usage.cached_tokens))
                        }
                        (FinishReason::Error(error), ..) => Err(error_status(&error)),
                        (reason, ..) => Err(Status::internal(format!(
                            "the prefill ended ({}) without its first token and keys and values",
                            reason.as_str()
                        ))),
                    };
                }
            }
        }
        Err(Status::unavailable("the engine stopped"))
    }
}

/// The status for a prefill the engine refused or failed.
fn error_status(error: &RequestError) -> Status {
    match error {
        RequestError::Invalid(_) | RequestError::ExceedsContext { .. } => {
            Status::invalid_argument(error.to_string())
        }
        RequestError::ExceedsKvCache { .. } => Status::resource_exhausted(error.to_string()),
        RequestError::Model(_) | RequestError::KvTransfer(_) => Status::internal(error.to_string()),
        RequestError::EngineStopped | RequestError::GivenBack => {
            Status::unavailable(error.to_string())
        }
    }
}

/// The messages of one transfer, in order: header, chunks layer by layer, trailer.
fn transfer_messages(
    transfer_id: String,
    layout: KvCacheLayout,
    kv: Arc<PromptKv>,
    first_token: u32,
) -> impl Iterator<Item = KvTransferMessage> {
    let header = kv_transfer_message::Part::Header(KvTransferHeader {
        transfer_id,
        prompt_tokens: kv.prompt_tokens as u32,
        layout: Some(layout),
    });
    let blocks_per_chunk = (CHUNK_BYTES / (8 * kv.block_len.max(1))).max(1);
    let blocks = kv.blocks();
    let chunks = (0..kv.layers.len()).flat_map(move |layer| {
        let kv = Arc::clone(&kv);
        (0..blocks).step_by(blocks_per_chunk).map(move |first| {
            let count = blocks_per_chunk.min(blocks - first);
            let range = first * kv.block_len..(first + count) * kv.block_len;
            let bytes = |values: &[f32]| -> Vec<u8> {
                values.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            kv_transfer_message::Part::Chunk(KvChunk {
                layer: layer as u32,
                first_block: first as u32,
                block_count: count as u32,
                keys: bytes(&kv.layers[layer].keys[range.clone()]).into(),
                values: bytes(&kv.layers[layer].values[range]).into(),
            })
        })
    });
    let trailer = kv_transfer_message::Part::Trailer(KvTransferTrailer {
        first_token: Some(GeneratedTokens {
            token_ids: vec![first_token],
            logprobs: Vec::new(),
        }),
    });
    std::iter::once(header)
        .chain(chunks)
        .chain(std::iter::once(trailer))
        .map(|part| KvTransferMessage { part: Some(part) })
}

/// Pushes one transfer to the decode worker at `address`; the bytes of keys and values sent.
async fn push(
    jobs: &JobContext,
    address: &str,
    messages: impl Iterator<Item = KvTransferMessage> + Send + 'static,
) -> Result<u64, Status> {
    let mut client = KvTransferClient::new(jobs.peers.channel(address)?)
        .max_encoding_message_size(2 * CHUNK_BYTES + 4096);
    let (tx, rx) = mpsc::channel(MESSAGES_AHEAD);
    let produce = async move {
        let mut bytes = 0u64;
        for message in messages {
            if let Some(kv_transfer_message::Part::Chunk(chunk)) = &message.part {
                bytes += (chunk.keys.len() + chunk.values.len()) as u64;
            }
            if tx.send(message).await.is_err() {
                break;
            }
        }
        bytes
    };
    let (bytes, acknowledged) = tokio::join!(produce, client.push_kv(ReceiverStream::new(rx)));
    acknowledged.map_err(|status| match status.code() {
        // The transfer itself is malformed: no other decode worker would take it either.
        Code::InvalidArgument | Code::FailedPrecondition => {
            peer_status(address, "pushing KV", &status)
        }
        // The decode worker is gone, or its job is (cancelled, or no room for the blocks).
        _ => peer_failed(
            address,
            format!("pushing KV to {address} failed: {}", status.message()),
        ),
    })?;
    Ok(bytes)
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

#[tonic::async_trait]
impl Prefiller for PrefillService {
    async fn prefill(
        &self,
        request: Request<PrefillJob>,
    ) -> Result<Response<PrefillResult>, Status> {
        let PrefillJob {
            job,
            decode_worker,
            transfer_id,
        } = request.into_inner();
        let mut job =
            job.ok_or_else(|| Status::invalid_argument("the prefill job has no GenerateJob"))?;
        if decode_worker.is_empty() || transfer_id.is_empty() || job.request_id.is_empty() {
            return Err(Status::invalid_argument(
                "a prefill job needs a request_id, a decode_worker and a transfer_id",
            ));
        }
        // Only the first token is generated here.
        job.max_tokens = 1;
        let received = Instant::now();
        let request = engine_request(job, Images::Needed, &self.jobs).await?;
        let vision = received.elapsed();
        let (first_token, kv, cached_tokens) = self.run_prompt(request).await?;
        let prefilled = Instant::now();
        let messages = transfer_messages(transfer_id, self.layout, kv, first_token);
        let bytes_sent = push(&self.jobs, &decode_worker, messages).await?;
        Ok(Response::new(PrefillResult {
            cached_tokens: cached_tokens as u32,
            vision_us: micros(vision),
            prefill_us: micros(prefilled.duration_since(received) - vision),
            transfer_us: micros(prefilled.elapsed()),
            bytes_sent,
        }))
    }
}
