//! The vision worker's encoder: one thread owns the vision tower and, each time it is free, takes
//! every image waiting (up to a patch budget) and encodes them in one packed batch, each distinct
//! image once, answering repeats from the feature cache. Concurrent requests so share the tower's
//! large matrix products instead of queueing one image at a time.
//!
//! Its [`EncoderLoad`] (images waiting and being encoded, their patches, batches answered) is what
//! a vision worker reports as its load: a worker with images to encode whose batch count stops
//! rising is hung.

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

impl EncodeJob {
    fn patches(&self) -> usize {
        self.image.grid_h * self.image.grid_w
    }
}

/// What the encoder has to do and has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderLoad {
    /// Images waiting for the encoder thread.
    pub queued_images: usize,
    /// Images in the batch being encoded.
    pub running_images: usize,
    /// Patches of the waiting and running images: the work still to do.
    pub pending_patches: usize,
    /// Batches answered so far (each encoding every uncached image that was waiting): rises while
    /// the encoder makes progress.
    pub batches: u64,
}

/// A handle to the encoder thread; the thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct VisionBatcher {
    jobs: Sender<EncodeJob>,
    load: Arc<Mutex<EncoderLoad>>,
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
        let load = Arc::default();
        let counts = Arc::clone(&load);
        std::thread::Builder::new()
            .name("fovea-vision".into())
            .spawn(move || run(&model, &cache, max_batch_patches, &counts, receiver))?;
        Ok(VisionBatcher { jobs, load })
    }

    /// The features of `image` (known by `key`), from the cache or the next batch.
    pub async fn encode(
        &self,
        key: ImageKey,
        image: PreparedImage,
    ) -> Result<GridFeatures, String> {
        let (reply, answer) = oneshot::channel();
        let job = EncodeJob { key, image, reply };
        let patches = job.patches();
        {
            let mut load = lock(&self.load);
            load.queued_images += 1;
            load.pending_patches += patches;
        }
        if self.jobs.send(job).is_err() {
            let mut load = lock(&self.load);
            load.queued_images -= 1;
            load.pending_patches -= patches;
            return Err("the vision encoder has stopped".to_string());
        }
        answer
            .await
            .map_err(|_| "the vision encoder has stopped".to_string())?
    }

    /// What the encoder has to do and has done, now.
    pub fn load(&self) -> EncoderLoad {
        *lock(&self.load)
    }
}

fn lock(load: &Mutex<EncoderLoad>) -> std::sync::MutexGuard<'_, EncoderLoad> {
    load.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run(
    model: &Phi4VisionModel,
    cache: &Mutex<ImageFeatureCache>,
    max_batch_patches: usize,
    load: &Mutex<EncoderLoad>,
    jobs: Receiver<EncodeJob>,
) {
    while let Ok(first) = jobs.recv() {
        let mut patches = first.patches();
        let mut batch = vec![first];
        while patches < max_batch_patches {
            match jobs.try_recv() {
                Ok(job) => {
                    patches += job.patches();
                    batch.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        {
            let mut load = lock(load);
            load.queued_images -= batch.len();
            load.running_images = batch.len();
        }
        let answers = encode_batch(model, cache, &batch);
        {
            // Counted as done before anyone hears back, so an answered image is never load.
            let mut load = lock(load);
            load.running_images = 0;
            load.pending_patches -= patches;
            load.batches += 1;
        }
        for (job, answer) in batch.into_iter().zip(answers) {
            let _ = job.reply.send(answer);
        }
    }
}

/// The answer to every job of `batch`, in order: the vision tower runs on the images the cache
/// lacks.
fn encode_batch(
    model: &Phi4VisionModel,
    cache: &Mutex<ImageFeatureCache>,
    batch: &[EncodeJob],
) -> Vec<Result<GridFeatures, String>> {
    let mut distinct: Vec<&EncodeJob> = Vec::new();
    for job in batch {
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
    batch
        .iter()
        .map(|job| match known.iter().find(|(key, _)| *key == job.key) {
            Some((_, features)) => Ok(features.clone()),
            None => Err(failure.clone().unwrap_or_default()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use fovea_model::testing::{
        golden_model, golden_preparer, max_relative_difference, prepared_golden_cases,
    };

    use super::*;

    /// A job for `image` (whose answer goes nowhere).
    fn job(image: &PreparedImage) -> EncodeJob {
        EncodeJob {
            key: ImageKey::of(image),
            image: image.clone(),
            reply: oneshot::channel().0,
        }
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
        let cached = job(&images[0]);
        let first_alone = model.encode_images(&[&images[0]]).unwrap().remove(0);
        let grid = (images[0].grid_h, images[0].grid_w, ());
        cache
            .lock()
            .unwrap()
            .insert(cached.key, first_alone.reshape(grid).unwrap());
        let order = [0, 1, 2, 1];
        let jobs: Vec<_> = order.iter().map(|&i| job(&images[i])).collect();

        let answers = encode_batch(&model, &cache, &jobs);
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
            let got = answer.unwrap();
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
        let jobs: Vec<_> = order.iter().map(|&i| job(&images[i])).collect();
        assert!(
            encode_batch(&model, &cache, &jobs)
                .iter()
                .all(Result::is_ok)
        );
        assert_eq!(cache.lock().unwrap().encoded(), 3, "nothing encoded again");
    }

    #[test]
    fn every_answered_image_has_left_the_load_and_counted_in_a_batch() {
        let model = Arc::new(golden_model(DType::F32));
        let images: Vec<PreparedImage> = prepared_golden_cases(&golden_preparer())
            .into_iter()
            .flat_map(|case| case.request.images.into_iter().map(|(_, image)| image))
            .collect();
        let cache = Arc::new(Mutex::new(ImageFeatureCache::new(256 << 20)));
        let batcher = VisionBatcher::start(model, cache, 1 << 20).unwrap();
        assert_eq!(batcher.load(), EncoderLoad::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answers = runtime.block_on(encode_all(&batcher, &images));
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        let load = batcher.load();
        assert_eq!(
            (
                load.queued_images,
                load.running_images,
                load.pending_patches
            ),
            (0, 0, 0),
            "{load:?}"
        );
        assert!(
            (1..=images.len() as u64).contains(&load.batches),
            "{} images in {} batches",
            images.len(),
            load.batches
        );
    }

    /// Encodes every image of `images` at once through `batcher`.
    async fn encode_all(
        batcher: &VisionBatcher,
        images: &[PreparedImage],
    ) -> Vec<Result<GridFeatures, String>> {
        let calls: Vec<_> = images
            .iter()
            .map(|image| {
                let (batcher, image) = (batcher.clone(), image.clone());
                tokio::spawn(async move { batcher.encode(ImageKey::of(&image), image).await })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        answers
    }
}
