//! The workers a coordinator sends jobs to, as gRPC clients of the worker API. Jobs go to the
//! worker with the fewest jobs in flight from this coordinator; a worker that cannot be reached
//! makes requests fail with UNAVAILABLE rather than wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fovea_proto::worker::v1::AbortRequest;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

struct Worker {
    address: String,
    client: WorkerClient<Channel>,
    in_flight: AtomicUsize,
}

/// The coordinator's view of its workers; cheap to clone.
#[derive(Clone, Default)]
pub struct WorkerPool {
    workers: Arc<Vec<Worker>>,
}

/// A chosen worker's client; counts as one job in flight on it until dropped.
pub struct WorkerLease {
    pool: WorkerPool,
    index: usize,
    client: WorkerClient<Channel>,
}

impl WorkerPool {
    /// Clients for workers at `addresses` (`http://host:port`); connections are made lazily, so
    /// workers may start after the coordinator.
    pub fn new(addresses: &[String]) -> Result<Self, tonic::transport::Error> {
        let workers = addresses
            .iter()
            .map(|address| {
                let channel = Endpoint::from_shared(address.clone())?.connect_lazy();
                Ok(Worker {
                    address: address.clone(),
                    client: WorkerClient::new(channel)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        Ok(WorkerPool {
            workers: Arc::new(workers),
        })
    }

    /// The least busy worker.
    pub fn pick(&self) -> Result<WorkerLease, Status> {
        let (index, worker) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.in_flight.load(Ordering::Relaxed))
            .ok_or_else(|| Status::unavailable("no worker serves this model"))?;
        worker.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(WorkerLease {
            pool: self.clone(),
            index,
            client: worker.client.clone(),
        })
    }

    /// Asks every worker to drop `request_id` (only the one running it has it).
    pub async fn abort(&self, request_id: &str) {
        for worker in self.workers.iter() {
            let request = AbortRequest {
                request_id: request_id.to_string(),
            };
            if let Err(status) = worker.client.clone().abort(request).await {
                tracing::warn!(worker = %worker.address, %request_id, "abort failed: {}", status.message());
            }
        }
    }
}

impl std::ops::Deref for WorkerLease {
    type Target = WorkerClient<Channel>;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for WorkerLease {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        self.pool.workers[self.index].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
