//! The membership contract both registries implement: register a record for as long as a
//! worker lives, and follow the set of live records.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::record::WorkerRecord;

/// The live workers by id.
pub type Members = Arc<BTreeMap<String, WorkerRecord>>;

/// Where workers register and coordinators look them up.
pub trait Registry: Send + Sync {
    /// Keeps `record` among the live workers until the returned registration is withdrawn or
    /// dropped. Never fails: a registry that cannot be reached is retried in the background
    /// ([`Registration::registered`] tells when the record is in).
    fn register(&self, record: WorkerRecord) -> Registration;

    /// The live workers now, and again whenever they change. A registry that cannot be reached
    /// keeps its last view.
    fn members(&self) -> watch::Receiver<Members>;
}

/// A record kept registered by a background task. Dropping it withdraws the record too, without
/// waiting for that to finish.
#[derive(Debug)]
pub struct Registration {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    registered: watch::Receiver<bool>,
}

impl Registration {
    /// Runs `keep` as the registration task: it keeps the record registered, reports through its
    /// `watch::Sender` whether the record is in, and withdraws the record and returns once its
    /// `oneshot::Receiver` resolves (sent or dropped).
    pub(crate) fn spawn<F, Fut>(keep: F) -> Registration
    where
        F: FnOnce(oneshot::Receiver<()>, watch::Sender<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let (registered_tx, registered) = watch::channel(false);
        Registration {
            stop: Some(stop),
            task: tokio::spawn(keep(stopped, registered_tx)),
            registered,
        }
    }

    /// Waits until the record is registered (again, after a loss).
    pub async fn registered(&mut self) {
        let _ = self.registered.wait_for(|&registered| registered).await;
    }

    /// Removes the record and waits until that is done (or given up on).
    pub async fn withdraw(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
