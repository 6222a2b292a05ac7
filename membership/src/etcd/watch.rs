//! A coordinator's side: the live records under the prefix, followed by reading a snapshot and
//! watching from the revision after it. After a lost connection the next snapshot replaces the
//! view, so no change is missed; until then the last view stays.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use tokio::sync::watch;

use super::{EtcdConfig, EtcdError, RETRY_FIRST, RETRY_MAX, connect, timed};
use crate::backoff::Backoff;
use crate::record::WorkerRecord;
use crate::registry::Members;

/// Follows etcd into `view` until every receiver of it is gone.
pub(super) async fn follow(config: Arc<EtcdConfig>, view: watch::Sender<Members>) {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let error = tokio::select! {
            () = view.closed() => return,
            error = follow_once(&config, &view, &mut backoff) => error,
        };
        tracing::warn!("membership view kept while etcd is unreachable: {error}");
        tokio::select! {
            () = view.closed() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One connection's worth of following; returns why it stopped.
async fn follow_once(
    config: &EtcdConfig,
    view: &watch::Sender<Members>,
    backoff: &mut Backoff,
) -> EtcdError {
    let prefix = config.workers_prefix();
    let mut client = match connect(config).await {
        Ok(client) => client,
        Err(error) => return error,
    };
    let snapshot =
        match timed(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await {
            Ok(snapshot) => snapshot,
            Err(error) => return error,
        };
    let revision = snapshot.header().map_or(0, |header| header.revision());
    let mut members = BTreeMap::new();
    for kv in snapshot.kvs() {
        apply_put(&mut members, &prefix, kv);
    }
    view.send_replace(Arc::new(members.clone()));
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut changes = match timed(client.watch(prefix.as_str(), Some(options))).await {
        Ok(changes) => changes,
        Err(error) => return error,
    };
    backoff.reset();
    loop {
        let response = match changes.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return EtcdError::StreamEnded("watch"),
            Err(error) => return error.into(),
        };
        if response.canceled() {
            return EtcdError::WatchCancelled(response.cancel_reason().to_string());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => apply_put(&mut members, &prefix, kv),
                EventType::Delete => {
                    if let Some(id) = worker_id(&prefix, kv) {
                        members.remove(id);
                    }
                }
            }
        }
        if !response.events().is_empty() {
            view.send_replace(Arc::new(members.clone()));
        }
    }
}

/// The worker id in `kv`'s key.
fn worker_id<'a>(prefix: &str, kv: &'a KeyValue) -> Option<&'a str> {
    kv.key_str()
        .ok()?
        .strip_prefix(prefix)
        .filter(|id| !id.is_empty())
}

/// Puts `kv`'s record into `members`; a value that is not a record (or whose id disagrees with
/// its key) is skipped with a warning, and removes what was there.
fn apply_put(members: &mut BTreeMap<String, WorkerRecord>, prefix: &str, kv: &KeyValue) {
    let Some(id) = worker_id(prefix, kv) else {
        return;
    };
    match serde_json::from_slice::<WorkerRecord>(kv.value()) {
        Ok(record) if record.id == id => {
            members.insert(id.to_string(), record);
        }
        Ok(record) => {
            tracing::warn!(
                key = id,
                "skipping a record whose id {:?} is not its key",
                record.id
            );
            members.remove(id);
        }
        Err(error) => {
            tracing::warn!(
                key = id,
                "skipping a record that is not a worker record: {error}"
            );
            members.remove(id);
        }
    }
}
