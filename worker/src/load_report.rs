//! Load reports (`Worker.WatchLoad`), the same stream for every role: the load now, then again
//! every interval. Once the worker drains they say DRAINING, and the stream ends as soon as a
//! draining worker has nothing left to do, so that its server can stop.

use std::time::Duration;

use fovea_proto::worker::v1::{WatchLoadRequest, WorkerLoad, WorkerState};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// A worker's load reports as `Worker.WatchLoad` streams them.
pub type LoadReports = ReceiverStream<Result<WorkerLoad, Status>>;

/// Milliseconds between reports when the request leaves it to the worker.
const DEFAULT_INTERVAL_MS: u32 = 100;

/// Streams what `snapshot` says of the worker's load (its state is set here) at the interval
/// `request` asks for, until the caller goes away or, once `draining` says so, the worker is idle.
/// An interval outside 10 to 60000 ms is INVALID_ARGUMENT.
pub fn load_reports(
    request: WatchLoadRequest,
    draining: watch::Receiver<bool>,
    snapshot: impl Fn() -> WorkerLoad + Send + 'static,
) -> Result<LoadReports, Status> {
    let interval_ms = match request.interval_ms {
        0 => DEFAULT_INTERVAL_MS,
        ms @ 10..=60_000 => ms,
        other => {
            return Err(Status::invalid_argument(format!(
                "interval_ms must be 10 to 60000, got {other}"
            )));
        }
    };
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(interval_ms.into()));
        loop {
            ticks.tick().await;
            let draining = *draining.borrow();
            let load = WorkerLoad {
                state: if draining {
                    WorkerState::Draining
                } else {
                    WorkerState::Serving
                } as i32,
                ..snapshot()
            };
            let idle = load.running_requests == 0 && load.queued_requests == 0;
            if tx.send(Ok(load)).await.is_err() {
                break;
            }
            // A drained worker's last report: the stream ends so that the server can stop.
            if draining && idle {
                break;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
