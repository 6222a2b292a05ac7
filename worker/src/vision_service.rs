//! The vision role's service (`fovea.worker.v1.VisionEncoder`): encodes an image with SigLIP-2
//! and the projector, or takes its features from the cache by content hash, and streams them as
//! f32 rows. Images are decoded on blocking threads, then encoded by the [`VisionBatcher`], which
//! runs every image waiting in one packed batch; a vision worker is scaled out by running more of
//! them (data parallel).

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::Tensor;
use fovea_model::Phi4VisionModel;
use fovea_model::preprocess::{PreprocessConfig, prepare_image};
use fovea_proto::worker::v1::vision_encoder_server::VisionEncoder;
use fovea_proto::worker::v1::{
    DType as WireDType, EncodedImage, FeatureRows, ImageFeaturesChunk, ImageFeaturesHeader,
    VisionJob, image_features_chunk,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::image_cache::{ImageFeatureCache, ImageKey};
use crate::job::content_hash;
use crate::vision_batcher::{EncoderLoad, VisionBatcher};

/// Bytes of feature rows per stream message, at most.
const ROWS_MESSAGE_BYTES: usize = 1 << 20;

/// Patches per vision-tower batch: a few full-size (3600-patch) images.
const MAX_BATCH_PATCHES: usize = 16384;

/// Counts of what the encoder did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VisionStats {
    /// Images run through the vision tower.
    pub encoded: u64,
    /// Images answered from the cache.
    pub cache_hits: u64,
    /// Batches the encoder answered (each encoding every uncached image that was waiting).
    pub batches: u64,
}

/// The `VisionEncoder` service.
#[derive(Clone)]
pub struct VisionEncoderService {
    preprocess: Arc<PreprocessConfig>,
    /// Features by image key, each `[grid_h, grid_w, hidden]` so a hit knows its grid.
    cache: Arc<Mutex<ImageFeatureCache>>,
    encoder: VisionBatcher,
}

impl VisionEncoderService {
    /// Encodes with `model`'s vision tower and projector, decoding images with `preprocess`,
    /// keeping up to `cache_bytes` of features.
    pub fn new(
        model: Arc<Phi4VisionModel>,
        preprocess: Arc<PreprocessConfig>,
        cache_bytes: usize,
    ) -> std::io::Result<Self> {
        let cache = Arc::new(Mutex::new(ImageFeatureCache::new(cache_bytes)));
        Ok(VisionEncoderService {
            encoder: VisionBatcher::start(model, Arc::clone(&cache), MAX_BATCH_PATCHES)?,
            preprocess,
            cache,
        })
    }

    /// What the encoder did so far.
    pub fn stats(&self) -> VisionStats {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        VisionStats {
            encoded: cache.encoded(),
            cache_hits: cache.hits(),
            batches: self.encoder.load().batches,
        }
    }

    /// What the encoder has to do and has done, now: the vision worker's load.
    pub fn load(&self) -> EncoderLoad {
        self.encoder.load()
    }

    fn cached(&self, key: ImageKey) -> Option<Tensor> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
    }

    /// Decodes `image`, checking its planned grid, and encodes it in the next batch;
    /// `[grid_h, grid_w, hidden]` f32.
    async fn encode(&self, key: ImageKey, image: EncodedImage) -> Result<Tensor, Status> {
        let planned = (image.grid_rows, image.grid_cols);
        let preprocess = Arc::clone(&self.preprocess);
        let image = tokio::task::spawn_blocking(move || {
            let image = prepare_image(&image.data, &preprocess)
                .map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
            let grid = (image.grid_h, image.grid_w);
            if planned != (0, 0) && (planned.0 as usize, planned.1 as usize) != grid {
                return Err(Status::invalid_argument(format!(
                    "the image decodes to a {}x{} grid, the job planned {}x{}",
                    grid.0, grid.1, planned.0, planned.1
                )));
            }
            Ok(image)
        })
        .await
        .map_err(|e| Status::internal(format!("decoding the image failed: {e}")))??;
        self.encoder
            .encode(key, image)
            .await
            .map_err(Status::internal)
    }
}

/// The header and row messages of `features` (`[grid_h, grid_w, hidden]` f32).
fn feature_messages(
    hash: [u8; 16],
    features: &Tensor,
    cached: bool,
) -> Result<Vec<ImageFeaturesChunk>, Status> {
    let (grid_h, grid_w, hidden) = features
        .dims3()
        .map_err(|e| Status::internal(format!("cached features: {e}")))?;
    let values: Vec<f32> = features
        .flatten_all()
        .and_then(|f| f.to_vec1())
        .map_err(|e| Status::internal(format!("cached features: {e}")))?;
    let header = ImageFeaturesHeader {
        content_hash: hash.to_vec().into(),
        grid_rows: grid_h as u32,
        grid_cols: grid_w as u32,
        hidden_size: hidden as u32,
        dtype: WireDType::DtypeF32 as i32,
        cached,
    };
    let mut messages = vec![ImageFeaturesChunk {
        part: Some(image_features_chunk::Part::Header(header)),
    }];
    let rows_per_message = (ROWS_MESSAGE_BYTES / (4 * hidden.max(1))).max(1);
    for (index, rows) in values.chunks(rows_per_message * hidden).enumerate() {
        let data: Vec<u8> = rows.iter().flat_map(|value| value.to_le_bytes()).collect();
        messages.push(ImageFeaturesChunk {
            part: Some(image_features_chunk::Part::Rows(FeatureRows {
                first_row: (index * rows_per_message) as u32,
                row_count: (rows.len() / hidden) as u32,
                data: data.into(),
            })),
        });
    }
    Ok(messages)
}

#[tonic::async_trait]
impl VisionEncoder for VisionEncoderService {
    type EncodeImageStream = ReceiverStream<Result<ImageFeaturesChunk, Status>>;

    async fn encode_image(
        &self,
        request: Request<VisionJob>,
    ) -> Result<Response<Self::EncodeImageStream>, Status> {
        let job = request.into_inner();
        let image = job
            .image
            .ok_or_else(|| Status::invalid_argument("the vision job has no image"))?;
        let hash = content_hash(0, &image)?;
        let key = ImageKey::of_file(hash);
        let (features, cached) = match self.cached(key) {
            Some(features) => (features, true),
            None if image.data.is_empty() => {
                return Err(Status::not_found(format!(
                    "the image of {:?} is not in this vision worker's cache; send its data",
                    job.request_id
                )));
            }
            None => (self.encode(key, image).await?, false),
        };
        let messages = feature_messages(hash, &features, cached)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for message in messages {
                if tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
