//! One worker's load stream (`Worker.WatchLoad`), read into its [`WorkerHealth`] for as long as
//! the worker is in the pool, and opened again whenever it breaks.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fovea_proto::worker::v1::WatchLoadRequest;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use tonic::transport::Channel;

use crate::health::WorkerHealth;

/// Milliseconds between a worker's load reports.
const REPORT_INTERVAL_MS: u32 = 100;
/// Wait before opening a broken stream again.
const REOPEN_DELAY: Duration = Duration::from_millis(200);

/// Reads `worker`'s load reports into `health` until the task is aborted.
pub(crate) async fn watch_load(
    worker_id: String,
    client: WorkerClient<Channel>,
    health: Arc<Mutex<WorkerHealth>>,
) {
    let lock = || health.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let request = WatchLoadRequest {
            interval_ms: REPORT_INTERVAL_MS,
        };
        match client.clone().watch_load(request).await {
            Ok(response) => {
                let mut reports = response.into_inner();
                while let Ok(Some(load)) = reports.message().await {
                    lock().observe(load, Instant::now());
                }
                tracing::debug!(worker = %worker_id, "load stream ended");
            }
            Err(status) => {
                tracing::debug!(worker = %worker_id, "load stream refused: {}", status.message())
            }
        }
        lock().lost_contact();
        tokio::time::sleep(REOPEN_DELAY).await;
    }
}
