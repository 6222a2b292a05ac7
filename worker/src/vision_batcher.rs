//! The vision worker's encoder: one thread owns the vision tower and, each time it is free, takes
//! every image waiting (up to a patch budget) and encodes them in one packed batch, each distinct
//! image once, answering repeats from the feature cache. Concurrent requests so share the tower's
//! large matrix products instead of queueing one image at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Tensor};
use fovea_model::Phi4VisionModel;
use fovea_model::preprocess::PreparedImage;
use tokio::sync::oneshot;

use crate::image_cache::{ImageFeatureCache, ImageKey};

/// Features as the vision service keeps and streams them: `[grid_h, grid_w, hidden]` f32.
pub type GridFeatures = Tensor;

struct EncodeJob {
    key: ImageKey,
    image: PreparedImage,
    reply: oneshot::Sender<Result<GridFeatures, String>>,
}

/// A handle to the encoder thread; the thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct VisionBatcher {
    jobs: Sender<EncodeJob>,
    batches: Arc<AtomicU64>,
}

impl VisionBatcher {
    /// Starts the encoder thread on `model`'s vision tower, batching up to `max_batch_patches`
    /// patches (an image larger than that runs alone), filling `cache`.
    pub fn start(
        model: Arc<Phi4VisionModel>,
        cache: Arc<Mutex<ImageFeatureCache>>,
        max_batch_patches: usize,
    ) -> std::io::Result<Self> {
        let (jobs, receiver) = std::sync::mpsc::channel();
        let batches = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&batches);
        std::thread::Builder::new()
            .name("fovea-vision".into())
            .spawn(move || run(&model, &cache, max_batch_patches, &counter, receiver))?;
        Ok(VisionBatcher { jobs, batches })
    }

    /// The features of `image` (known by `key`), from the cache or the next batch.
    pub async fn encode(
        &self,
        key: ImageKey,
        image: PreparedImage,
    ) -> Result<GridFeatures, String> {
        let (reply, answer) = oneshot::channel();
        let job = EncodeJob { key, image, reply };
        self.jobs
            .send(job)
            .map_err(|_| "the vision encoder has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the vision encoder has stopped".to_string())?
    }

    /// Vision-tower batches run so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

fn run(
    model: &Phi4VisionModel,
    cache: &Mutex<ImageFeatureCache>,
    max_batch_patches: usize,
    batches: &AtomicU64,
    jobs: Receiver<EncodeJob>,
) {
    while let Ok(first) = jobs.recv() {
        let mut patches = first.image.grid_h * first.image.grid_w;
        let mut batch = vec![first];
        while patches < max_batch_patches {
            match jobs.try_recv() {
                Ok(job) => {
                    patches += job.image.grid_h * job.image.grid_w;
                    batch.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if encode_batch(model, cache, batch) {
            batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Answers every job of `batch`; says whether the vision tower ran.
fn encode_batch(
    model: &Phi4VisionModel,
    cache: &Mutex<ImageFeatureCache>,
    batch: Vec<EncodeJob>,
) -> bool {
    let mut distinct: Vec<&EncodeJob> = Vec::new();
    for job in &batch {
        if !distinct.iter().any(|first| first.key == job.key) {
            distinct.push(job);
        }
    }
    let mut known: Vec<(ImageKey, GridFeatures)> = Vec::new();
    let mut to_encode: Vec<&EncodeJob> = Vec::new();
    {
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        for job in distinct {
            match cache.get(job.key) {
                Some(features) => known.push((job.key, features)),
                None => to_encode.push(job),
            }
        }
    }
    let images: Vec<&PreparedImage> = to_encode.iter().map(|job| &job.image).collect();
    let encoded = model.encode_images(&images).and_then(|features| {
        features
            .into_iter()
            .zip(&to_encode)
            .map(|(rows, job)| {
                Ok(rows
                    .to_dtype(DType::F32)?
                    .reshape((job.image.grid_h, job.image.grid_w, ()))?)
            })
            .collect::<fovea_model::Result<Vec<_>>>()
    });
    let ran = !to_encode.is_empty();
    let failure = match encoded {
        Ok(features) => {
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            for (job, features) in to_encode.iter().zip(features) {
                cache.insert(job.key, features.clone());
                known.push((job.key, features));
            }
            None
        }
        Err(error) => Some(format!("encoding the image failed: {error}")),
    };
    for job in batch {
        let answer = match known.iter().find(|(key, _)| *key == job.key) {
            Some((_, features)) => Ok(features.clone()),
            None => Err(failure.clone().unwrap_or_default()),
        };
        let _ = job.reply.send(answer);
    }
    ran
}

#[cfg(test)]
mod tests {
    use fovea_model::testing::{
        golden_model, golden_preparer, max_relative_difference, prepared_golden_cases,
    };

    use super::*;

    /// A job for `image` and the receiver of its answer.
    fn job(image: &PreparedImage) -> (EncodeJob, oneshot::Receiver<Result<GridFeatures, String>>) {
        let (reply, answer) = oneshot::channel();
        let job = EncodeJob {
            key: ImageKey::of(image),
            image: image.clone(),
            reply,
        };
        (job, answer)
    }

    fn values(features: &Tensor) -> Vec<f32> {
        features.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn a_batch_encodes_each_distinct_uncached_image_once_and_answers_every_job() {
        let model = golden_model(DType::F32);
        let preparer = golden_preparer();
        let images: Vec<PreparedImage> = prepared_golden_cases(&preparer)
            .into_iter()
            .flat_map(|case| case.request.images.into_iter().map(|(_, image)| image))
            .collect();
        assert!(
            images.len() >= 3,
            "the golden cases hold {} images",
            images.len()
        );
        let cache = Mutex::new(ImageFeatureCache::new(256 << 20));
        // The first image is cached already; the second comes twice.
        let (cached, _) = job(&images[0]);
        let first_alone = model.encode_images(&[&images[0]]).unwrap().remove(0);
        let grid = (images[0].grid_h, images[0].grid_w, ());
        cache
            .lock()
            .unwrap()
            .insert(cached.key, first_alone.reshape(grid).unwrap());
        let order = [0, 1, 2, 1];
        let (jobs, answers): (Vec<_>, Vec<_>) = order.iter().map(|&i| job(&images[i])).unzip();

        assert!(encode_batch(&model, &cache, jobs));
        let (encoded, hits) = {
            let cache = cache.lock().unwrap();
            (cache.encoded(), cache.hits())
        };
        assert_eq!(
            (encoded, hits),
            (3, 1),
            "one insert up front, then images 1 and 2 once each"
        );
        for (&i, answer) in order.iter().zip(answers) {
            let got = answer.blocking_recv().unwrap().unwrap();
            let image = &images[i];
            assert_eq!(
                got.dims(),
                [image.grid_h, image.grid_w, model.config().text.hidden_size]
            );
            let alone = model.encode_image(image).unwrap();
            let difference = max_relative_difference(&values(&got), &values(&alone));
            assert!(difference < 1e-5, "image {i}: {difference}");
        }

        // Everything cached: the tower does not run.
        let (jobs, _answers): (Vec<_>, Vec<_>) = order.iter().map(|&i| job(&images[i])).unzip();
        assert!(!encode_batch(&model, &cache, jobs));
    }
}
