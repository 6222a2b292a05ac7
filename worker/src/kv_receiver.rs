//! The decode role's `fovea.worker.v1.KvTransfer` service: takes a prompt's keys and values
//! from a prefill worker into the blocks a waiting decode job reserved, then starts it decoding
//! from the prefill's first token.
//!
//! Back-pressure: at most [`RUNS_IN_FLIGHT`] block runs wait for the engine to write them; past
//! that the stream is not read, so gRPC flow control slows the sender. Cancel safety: a transfer
//! whose decode job ended is refused (CANCELLED) at its next message, and a transfer that breaks
//! off or is malformed ends its decode job with an error, freeing its blocks.
//!
//! Blocks arrive with every KV head of the model ([`crate::kv_heads`]), so the sender may run at
//! any tensor-parallel size; a header whose layout differs from this worker's (heads, head size,
//! layers, block size) is refused with the fields that differ.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use fovea_proto::worker::v1::kv_transfer_server::KvTransfer;
use fovea_proto::worker::v1::{
    KvCacheLayout, KvChunk, KvTransferAck, KvTransferMessage, kv_transfer_message,
};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::error::RequestError;
use crate::handle::EngineHandle;
use crate::kv_handoff::KvBlockRun;
use crate::request::RequestId;

/// Block runs received but not yet written by the engine, at most.
pub const RUNS_IN_FLIGHT: usize = 8;

/// A decode job waiting for its prompt's keys and values.
#[derive(Debug, Clone, Copy)]
struct Awaited {
    id: RequestId,
    prompt_tokens: usize,
    /// Whether a PushKv stream has claimed it.
    claimed: bool,
}

/// Decode jobs waiting for transfers, by transfer id; shared by the Worker service (which adds a
/// job when it arrives and removes it when it ends) and the KvTransfer service.
#[derive(Clone, Default)]
pub struct AwaitedTransfers {
    jobs: Arc<Mutex<HashMap<String, Awaited>>>,
}

impl AwaitedTransfers {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Awaited>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Expects transfer `transfer_id` for engine request `id` with a prompt of `prompt_tokens`.
    pub fn expect(
        &self,
        transfer_id: &str,
        id: RequestId,
        prompt_tokens: usize,
    ) -> Result<(), Status> {
        let mut jobs = self.jobs();
        if jobs.contains_key(transfer_id) {
            return Err(Status::already_exists(format!(
                "transfer {transfer_id:?} is already awaited"
            )));
        }
        let awaited = Awaited {
            id,
            prompt_tokens,
            claimed: false,
        };
        jobs.insert(transfer_id.to_string(), awaited);
        Ok(())
    }

    /// Forgets transfer `transfer_id` (its decode job ended).
    pub fn forget(&self, transfer_id: &str) {
        self.jobs().remove(transfer_id);
    }

    /// Claims `transfer_id` for one PushKv stream.
    fn claim(&self, transfer_id: &str) -> Result<Awaited, Status> {
        let mut jobs = self.jobs();
        let awaited = jobs.get_mut(transfer_id).ok_or_else(|| {
            Status::not_found(format!(
                "no decode job awaits transfer {transfer_id:?} (never sent, or ended)"
            ))
        })?;
        if awaited.claimed {
            return Err(Status::already_exists(format!(
                "transfer {transfer_id:?} is already being pushed"
            )));
        }
        awaited.claimed = true;
        Ok(*awaited)
    }

    fn is_awaited(&self, transfer_id: &str) -> bool {
        self.jobs().contains_key(transfer_id)
    }
}

/// The `KvTransfer` service.
pub struct KvReceiverService {
    engine: EngineHandle,
    awaited: AwaitedTransfers,
    layout: KvCacheLayout,
}

impl KvReceiverService {
    /// Receives into `engine`, whose cache has `layout`, for the decode jobs in `awaited`.
    pub fn new(engine: EngineHandle, awaited: AwaitedTransfers, layout: KvCacheLayout) -> Self {
        KvReceiverService {
            engine,
            awaited,
            layout,
        }
    }
}

/// One transfer in progress: which blocks of which layers have arrived.
struct Reception {
    transfer_id: String,
    awaited: Awaited,
    layout: KvCacheLayout,
    blocks: usize,
    /// `layers × blocks` flags.
    received: Vec<bool>,
    permits: Arc<Semaphore>,
}

impl Reception {
    fn block_len(&self) -> usize {
        (self.layout.num_kv_heads * self.layout.block_size * self.layout.head_dim) as usize
    }

    /// Checks `chunk` and turns it into a block run for the engine.
    fn run(&mut self, chunk: KvChunk) -> Result<KvBlockRun, Status> {
        let (layer, first, count) = (
            chunk.layer as usize,
            chunk.first_block as usize,
            chunk.block_count as usize,
        );
        let bytes = count * self.block_len() * 4;
        if layer >= self.layout.num_layers as usize
            || count == 0
            || first + count > self.blocks
            || chunk.keys.len() != bytes
            || chunk.values.len() != bytes
        {
            return Err(Status::invalid_argument(format!(
                "chunk of layer {layer}, blocks {first}..+{count} with {} key and {} value bytes does not fit \
                 {} layers of {} blocks of {} bytes",
                chunk.keys.len(),
                chunk.values.len(),
                self.layout.num_layers,
                self.blocks,
                self.block_len() * 4
            )));
        }
        let flags =
            &mut self.received[layer * self.blocks + first..layer * self.blocks + first + count];
        if flags.iter().any(|&seen| seen) {
            return Err(Status::invalid_argument(format!(
                "layer {layer}, blocks {first}..+{count} were sent twice"
            )));
        }
        flags.fill(true);
        Ok(KvBlockRun {
            layer,
            first_block: first,
            keys: f32_values(&chunk.keys),
            values: f32_values(&chunk.values),
            permit: None,
        })
    }

    /// Receives the chunks and the trailer: the first token, once every block arrived.
    async fn receive(
        &mut self,
        stream: &mut Streaming<KvTransferMessage>,
        engine: &EngineHandle,
        awaited: &AwaitedTransfers,
    ) -> Result<u32, Status> {
        loop {
            let part = match stream.message().await {
                Ok(Some(message)) => message.part,
                Ok(None) => {
                    return Err(Status::aborted(
                        "the transfer broke off: the stream ended before its trailer",
                    ));
                }
                Err(status) => {
                    return Err(Status::aborted(format!(
                        "the transfer broke off: {}",
                        status.message()
                    )));
                }
            };
            if !awaited.is_awaited(&self.transfer_id) {
                return Err(Status::cancelled(format!(
                    "the decode job of transfer {:?} ended; the transfer is dropped",
                    self.transfer_id
                )));
            }
            match part {
                Some(kv_transfer_message::Part::Chunk(chunk)) => {
                    let mut run = self.run(chunk)?;
                    let permit = Arc::clone(&self.permits)
                        .acquire_owned()
                        .await
                        .map_err(|_| Status::unavailable("the worker is stopping"))?;
                    run.permit = Some(permit);
                    engine.write_kv(self.awaited.id, run);
                }
                Some(kv_transfer_message::Part::Trailer(trailer)) => {
                    let missing = self.received.iter().filter(|&&seen| !seen).count();
                    if missing > 0 {
                        return Err(Status::invalid_argument(format!(
                            "the trailer came with {missing} layer blocks still missing"
                        )));
                    }
                    return match trailer.first_token.map(|t| t.token_ids).as_deref() {
                        Some(&[token]) => Ok(token),
                        _ => Err(Status::invalid_argument(
                            "the trailer must carry exactly one first token",
                        )),
                    };
                }
                Some(kv_transfer_message::Part::Header(_)) => {
                    return Err(Status::invalid_argument("a second header in the transfer"));
                }
                None => return Err(Status::invalid_argument("an empty transfer message")),
            }
        }
    }
}

/// Ends the decode job of a transfer that did not complete, however the transfer ended.
struct BrokenOffGuard {
    engine: EngineHandle,
    /// `None` once the transfer completed.
    id: Option<RequestId>,
}

impl Drop for BrokenOffGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let why = "the transfer from the prefill worker broke off".to_string();
            self.engine.fail(id, RequestError::KvTransfer(why));
        }
    }
}

/// The fields in which a sender's transfer layout differs from this worker's, as
/// `name sent (here own)`; `None` when they are equal.
fn layout_differences(sent: &KvCacheLayout, own: &KvCacheLayout) -> Option<String> {
    let fields = [
        ("block_size", sent.block_size, own.block_size),
        ("num_layers", sent.num_layers, own.num_layers),
        ("num_kv_heads", sent.num_kv_heads, own.num_kv_heads),
        ("total_kv_heads", sent.total_kv_heads, own.total_kv_heads),
        ("first_kv_head", sent.first_kv_head, own.first_kv_head),
        ("head_dim", sent.head_dim, own.head_dim),
    ];
    let mut differences: Vec<String> = fields
        .iter()
        .filter(|(_, sent, own)| sent != own)
        .map(|(name, sent, own)| format!("{name} {sent} (here {own})"))
        .collect();
    if sent.dtype != own.dtype {
        differences.push(format!("dtype {:?} (here {:?})", sent.dtype(), own.dtype()));
    }
    (!differences.is_empty()).then(|| differences.join(", "))
}

/// Little-endian f32 bytes as values.
fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[tonic::async_trait]
impl KvTransfer for KvReceiverService {
    async fn push_kv(
        &self,
        request: Request<Streaming<KvTransferMessage>>,
    ) -> Result<Response<KvTransferAck>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(KvTransferMessage {
                part: Some(kv_transfer_message::Part::Header(header)),
            }) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "a transfer starts with its header",
                ));
            }
        };
        let awaited = self.awaited.claim(&header.transfer_id)?;
        // Also when the call is dropped (the prefill worker went away): the job must not wait on.
        let mut broken_off = BrokenOffGuard {
            engine: self.engine.clone(),
            id: Some(awaited.id),
        };
        let fail = |status: Status| {
            let error = RequestError::KvTransfer(status.message().to_string());
            self.engine.fail(awaited.id, error);
            status
        };
        let layout = header.layout.unwrap_or_default();
        if let Some(differences) = layout_differences(&layout, &self.layout) {
            return Err(fail(Status::failed_precondition(format!(
                "the sender's KV layout differs from this worker's in {differences}; a transfer carries \
                 every KV head of the model (num_kv_heads = total_kv_heads, first_kv_head = 0) whatever \
                 either side's tensor-parallel size, so both must serve the same model with the same block size"
            ))));
        }
        if header.prompt_tokens as usize != awaited.prompt_tokens {
            return Err(fail(Status::invalid_argument(format!(
                "the transfer holds {} prompt positions, the decode job's prompt has {}",
                header.prompt_tokens, awaited.prompt_tokens
            ))));
        }
        let blocks = awaited.prompt_tokens.div_ceil(layout.block_size as usize);
        let mut reception = Reception {
            transfer_id: header.transfer_id.clone(),
            awaited,
            blocks,
            received: vec![false; blocks * layout.num_layers as usize],
            layout,
            permits: Arc::new(Semaphore::new(RUNS_IN_FLIGHT)),
        };
        match reception
            .receive(&mut stream, &self.engine, &self.awaited)
            .await
        {
            Ok(first_token) => {
                broken_off.id = None;
                self.engine.complete_kv(awaited.id, first_token);
                Ok(Response::new(KvTransferAck {
                    blocks_received: reception.received.len() as u32,
                }))
            }
            Err(status) if status.code() == tonic::Code::Cancelled => Err(status),
            Err(status) => Err(fail(status)),
        }
    }
}
