//! Which vision worker encodes each image of a job: the one that encoded the same content before
//! (its cache then answers) while it is ready, else the least busy ready one. A prompt that waits
//! in the coordinator for a prefill worker with room has its new images encoded meanwhile
//! ([`VisionAssignment::prefetch`]), so that its prefill finds their features cached instead of
//! waiting for the vision tower.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use fovea_proto::worker::v1::{EncodedImage, GenerateJob, VisionJob, WorkerRole};

use crate::workers::{WorkerLease, WorkerPool};

/// Image contents remembered with the vision worker that encoded them, at most.
const AFFINITY_ENTRIES: usize = 65_536;

/// Image contents by the vision worker (address) that has them or is encoding them.
pub struct VisionAssignment {
    workers: WorkerPool,
    affinity: Mutex<HashMap<[u8; 16], String>>,
}

impl VisionAssignment {
    /// Assigns over the vision workers of `workers`.
    pub fn new(workers: WorkerPool) -> Self {
        VisionAssignment {
            workers,
            affinity: Mutex::default(),
        }
    }

    /// Names a vision worker in each image of `job` (whose content hashes are set): the one that
    /// has its content while it is ready (a hung or silent one is passed over), else the least
    /// busy ready one, unless `fresh_images_here`; with no vision worker ready (or not named),
    /// the image is encoded where it is prefilled. The leases count the encodings against the
    /// workers until dropped.
    pub fn assign(
        &self,
        job: &mut GenerateJob,
        excluded: &[String],
        fresh_images_here: bool,
    ) -> Vec<WorkerLease> {
        if !self.workers.has_role(WorkerRole::Vision) {
            return Vec::new();
        }
        let mut leases = Vec::with_capacity(job.images.len());
        let mut affinity = self.affinity();
        for input in &mut job.images {
            let Some(hash) = input.image.as_ref().and_then(content_hash) else {
                continue;
            };
            let address = match self.remembered(&affinity, &hash, excluded) {
                Some(address) => address,
                None if fresh_images_here => continue,
                None => match self.workers.pick_except(&[WorkerRole::Vision], excluded) {
                    Ok(lease) => {
                        let address = lease.address().to_string();
                        leases.push(lease);
                        address
                    }
                    Err(_) => continue,
                },
            };
            input.vision_worker = peer_address(&address).to_string();
            remember(&mut affinity, hash, address);
        }
        leases
    }

    /// Starts encoding the images of `job` (whose content hashes are set) that no ready vision
    /// worker has, each on the least busy ready one, which [`VisionAssignment::assign`] then
    /// names. The encodings run on their own: their features stay in the vision workers' caches.
    pub fn prefetch(&self, job: &GenerateJob, excluded: &[String]) {
        if !self.workers.has_role(WorkerRole::Vision) {
            return;
        }
        let mut affinity = self.affinity();
        for input in &job.images {
            let Some((image, hash)) = input
                .image
                .as_ref()
                .and_then(|image| Some((image, content_hash(image)?)))
            else {
                continue;
            };
            if image.data.is_empty() || self.remembered(&affinity, &hash, excluded).is_some() {
                continue;
            }
            let Ok(lease) = self.workers.pick_except(&[WorkerRole::Vision], excluded) else {
                return;
            };
            remember(&mut affinity, hash, lease.address().to_string());
            let encode = VisionJob {
                request_id: job.request_id.clone(),
                image: Some(image.clone()),
            };
            tokio::spawn(async move {
                // The answer comes once the features are cached; the rows are not needed here.
                if let Err(status) = lease.vision_encoder().encode_image(encode).await {
                    tracing::debug!(worker = %lease.worker_id(), "prefetching an image failed: {}", status.message());
                }
            });
        }
    }

    fn affinity(&self) -> MutexGuard<'_, HashMap<[u8; 16], String>> {
        self.affinity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The vision worker that has `hash`'s content, while it is ready and not in `excluded`.
    fn remembered(
        &self,
        affinity: &HashMap<[u8; 16], String>,
        hash: &[u8; 16],
        excluded: &[String],
    ) -> Option<String> {
        affinity
            .get(hash)
            .filter(|address| {
                self.workers.is_ready(WorkerRole::Vision, address) && !excluded.contains(address)
            })
            .cloned()
    }
}

/// An image's content hash, when set.
fn content_hash(image: &EncodedImage) -> Option<[u8; 16]> {
    <[u8; 16]>::try_from(&image.content_hash[..]).ok()
}

fn remember(affinity: &mut HashMap<[u8; 16], String>, hash: [u8; 16], address: String) {
    if affinity.len() >= AFFINITY_ENTRIES {
        affinity.clear();
    }
    affinity.insert(hash, address);
}

/// The `host:port` of an `http://host:port` address, as workers name their peers.
pub fn peer_address(address: &str) -> &str {
    address.split_once("://").map_or(address, |(_, rest)| rest)
}
