//! A worker job (`GenerateJob`) as the engine request it becomes. Each image is decoded here,
//! fetched as features from the vision worker the job names (on the async side: the engine never
//! waits on the network), or, when the prompt's keys and values come from a prefill worker, known
//! by its key only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fovea_model::ImagePlacement;
use fovea_model::preprocess::{PreprocessConfig, prepare_image};
use fovea_model::sampling::SamplingParams;
use fovea_proto::image_content_hash;
use fovea_proto::worker::v1::{EncodedImage, GenerateJob, ImageInput};
use tonic::Status;

use crate::image_cache::ImageKey;
use crate::peers::PeerChannels;
use crate::request::{GenerateRequest, ImageSource};
use crate::vision_client::fetch_features;

/// What turning jobs into requests needs.
#[derive(Clone)]
pub struct JobContext {
    pub preprocess: Arc<PreprocessConfig>,
    pub peers: Arc<PeerChannels>,
    /// The decoder's hidden size: elements per feature row.
    pub hidden_size: usize,
    /// Jobs being turned into requests now (their images fetched or decoded).
    pub preparing: Arc<PreparingJobs>,
}

/// Jobs accepted but not yet handed to the engine, which the worker's load reports count as
/// queued: a prefill worker fetching a prompt's image features has that prompt to compute.
#[derive(Debug, Default)]
pub struct PreparingJobs {
    jobs: AtomicUsize,
    prompt_tokens: AtomicUsize,
}

impl PreparingJobs {
    /// Jobs and their prompt tokens, now.
    pub fn count(&self) -> (usize, usize) {
        (
            self.jobs.load(Ordering::Relaxed),
            self.prompt_tokens.load(Ordering::Relaxed),
        )
    }

    /// Counts a job of `prompt_tokens` until the guard is dropped.
    fn start(self: &Arc<Self>, prompt_tokens: usize) -> PreparingGuard {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        PreparingGuard {
            jobs: Arc::clone(self),
            prompt_tokens,
        }
    }
}

struct PreparingGuard {
    jobs: Arc<PreparingJobs>,
    prompt_tokens: usize,
}

impl Drop for PreparingGuard {
    fn drop(&mut self) {
        self.jobs.jobs.fetch_sub(1, Ordering::Relaxed);
        self.jobs
            .prompt_tokens
            .fetch_sub(self.prompt_tokens, Ordering::Relaxed);
    }
}

/// Whether a job's images have to be turned into features on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    /// Decoded here or fetched from their vision workers.
    Needed,
    /// The prompt's keys and values come from a prefill worker: keys only.
    KeysOnly,
}

/// The engine request for `job`.
pub async fn engine_request(
    job: GenerateJob,
    images: Images,
    context: &JobContext,
) -> Result<GenerateRequest, Status> {
    let _preparing = context.preparing.start(job.prompt_token_ids.len());
    let mut sources = Vec::with_capacity(job.images.len());
    for (index, input) in job.images.into_iter().enumerate() {
        sources.push(image_source(index, input, &job.request_id, images, context).await?);
    }
    let wire_sampling = job.sampling.unwrap_or_default();
    let sampling = SamplingParams {
        temperature: wire_sampling.temperature,
        top_p: if wire_sampling.top_p == 0.0 {
            1.0
        } else {
            wire_sampling.top_p
        },
        top_k: wire_sampling.top_k as usize,
        seed: wire_sampling.seed,
        logprobs: wire_sampling.logprobs.map(|top| top as usize),
    };
    sampling
        .validate()
        .map_err(|e| Status::invalid_argument(format!("sampling: {e}")))?;
    let replayed_tokens = job.replayed_tokens as usize;
    Ok(GenerateRequest {
        prompt_ids: job.prompt_token_ids,
        images: sources,
        sampling,
        max_new_tokens: job.max_tokens as usize,
        // The coordinator resolved the end-of-turn tokens into the stop tokens.
        stop_token_ids: wire_sampling.stop_token_ids,
        ignore_eos: true,
        stop_strings: Vec::new(),
        skip_special_tokens: false,
        replayed_tokens,
    })
}

/// Image `index` of a job, placed and sourced.
async fn image_source(
    index: usize,
    input: ImageInput,
    request_id: &str,
    images: Images,
    context: &JobContext,
) -> Result<(ImagePlacement, ImageSource), Status> {
    let encoded = input
        .image
        .ok_or_else(|| Status::invalid_argument(format!("image {index} has no content")))?;
    let key = ImageKey::of_file(content_hash(index, &encoded)?);
    let start = input.start as usize;
    let planned = (encoded.grid_rows as usize, encoded.grid_cols as usize);
    if images == Images::KeysOnly {
        if planned.0 * planned.1 == 0 {
            return Err(Status::invalid_argument(format!(
                "image {index} has no grid_rows x grid_cols, which a job with a KV transfer needs"
            )));
        }
        let patches = planned.0 * planned.1;
        return Ok((
            ImagePlacement {
                start,
                len: patches,
            },
            ImageSource::KeyOnly { key, patches },
        ));
    }
    if !input.vision_worker.is_empty() {
        let features = fetch_features(context, &input.vision_worker, request_id, encoded).await?;
        let len = features.dims().first().copied().unwrap_or(0);
        return Ok((
            ImagePlacement { start, len },
            ImageSource::Features { key, features },
        ));
    }
    if encoded.data.is_empty() {
        return Err(Status::not_found(format!(
            "image {index} is sent by hash only and names no vision worker; send its data"
        )));
    }
    let preprocess = Arc::clone(&context.preprocess);
    let prepared = tokio::task::spawn_blocking(move || prepare_image(&encoded.data, &preprocess))
        .await
        .map_err(|e| Status::internal(format!("image decoding failed: {e}")))?
        .map_err(|e| Status::invalid_argument(format!("image {index}: {e}")))?;
    if planned != (0, 0) && planned != (prepared.grid_h, prepared.grid_w) {
        return Err(Status::invalid_argument(format!(
            "image {index} decodes to a {}x{} grid, the job says {}x{}",
            prepared.grid_h, prepared.grid_w, planned.0, planned.1
        )));
    }
    let len = prepared.grid_h * prepared.grid_w;
    Ok((ImagePlacement { start, len }, ImageSource::Pixels(prepared)))
}

/// The image's content hash: the job's, checked against the data when both are there, or the
/// data's.
pub fn content_hash(index: usize, image: &EncodedImage) -> Result<[u8; 16], Status> {
    let given: Option<[u8; 16]> = match image.content_hash.len() {
        0 => None,
        16 => image.content_hash[..].try_into().ok(),
        other => {
            return Err(Status::invalid_argument(format!(
                "image {index}: content_hash has {other} bytes, not 16"
            )));
        }
    };
    match (given, image.data.is_empty()) {
        (None, true) => Err(Status::invalid_argument(format!(
            "image {index} has neither data nor content_hash"
        ))),
        (Some(hash), true) => Ok(hash),
        (given, false) => {
            let computed = image_content_hash(&image.data);
            if given.is_some_and(|hash| hash != computed) {
                return Err(Status::invalid_argument(format!(
                    "image {index}: content_hash does not match the image data"
                )));
            }
            Ok(computed)
        }
    }
}
