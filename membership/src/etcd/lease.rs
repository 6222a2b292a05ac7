//! A worker's side: its record under a lease, kept alive at a third of the lease's TTL, put back
//! under a new lease when the old one expired (etcd was unreachable for longer than the TTL),
//! and revoked on withdrawal so that coordinators drop the worker at once.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::{oneshot, watch};

use super::{EtcdConfig, EtcdError, RETRY_FIRST, RETRY_MAX, connect, timed};
use crate::backoff::Backoff;
use crate::record::WorkerRecord;

/// The registration task: holds the record until `stopped`, reconnecting with backoff.
pub(super) async fn keep_registered(
    config: Arc<EtcdConfig>,
    record: WorkerRecord,
    mut stopped: oneshot::Receiver<()>,
    registered: watch::Sender<bool>,
) {
    let key = config.worker_key(&record.id);
    let value = serde_json::to_string(&record).expect("a worker record serializes");
    let mut lease = None;
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let error = tokio::select! {
            _ = &mut stopped => break,
            error = hold(&config, &key, &value, &mut lease, &registered, &mut backoff) => error,
        };
        registered.send_replace(false);
        tracing::warn!(worker = %record.id, "registration interrupted: {error}");
        tokio::select! {
            _ = &mut stopped => break,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    if let Some(id) = lease {
        withdraw(&config, id, &record.id).await;
    }
    registered.send_replace(false);
}

/// Connects, makes sure the record is in under a live lease (`lease` is the one from before, if
/// any) and keeps the lease alive; returns why it stopped.
async fn hold(
    config: &EtcdConfig,
    key: &str,
    value: &str,
    lease: &mut Option<i64>,
    registered: &watch::Sender<bool>,
    backoff: &mut Backoff,
) -> EtcdError {
    let mut client = match connect(config).await {
        Ok(client) => client,
        Err(error) => return error,
    };
    let ttl = config.lease_ttl.as_secs().max(1) as i64;
    let id = match *lease {
        Some(id) if still_alive(&mut client, id).await => id,
        _ => match timed(client.lease_grant(ttl, None)).await {
            Ok(granted) => granted.id(),
            Err(error) => return error,
        },
    };
    *lease = Some(id);
    // Put even under a surviving lease: it costs one write and repairs a deleted key.
    if let Err(error) = timed(client.put(key, value, Some(PutOptions::new().with_lease(id)))).await
    {
        return error;
    }
    registered.send_replace(true);
    backoff.reset();
    tracing::info!(%key, lease = id, "registered");
    match keep_alive(&mut client, id, Duration::from_secs(ttl as u64)).await {
        EtcdError::LeaseLost => {
            *lease = None;
            EtcdError::LeaseLost
        }
        error => error,
    }
}

/// Whether lease `id` still exists (it does after an etcd restart shorter than its TTL).
async fn still_alive(client: &mut Client, id: i64) -> bool {
    match timed(client.lease_time_to_live(id, None)).await {
        Ok(answer) => answer.ttl() > 0,
        Err(_) => false,
    }
}

/// Renews lease `id` every third of `ttl` until that fails.
async fn keep_alive(client: &mut Client, id: i64, ttl: Duration) -> EtcdError {
    let (mut keeper, mut answers) = match timed(client.lease_keep_alive(id)).await {
        Ok(streams) => streams,
        Err(error) => return error,
    };
    let mut ticks = tokio::time::interval(ttl / 3);
    loop {
        ticks.tick().await;
        if let Err(error) = keeper.keep_alive().await {
            return error.into();
        }
        match tokio::time::timeout(ttl, answers.message()).await {
            Err(_) => return EtcdError::Timeout(ttl),
            Ok(Err(error)) => return error.into(),
            Ok(Ok(None)) => return EtcdError::StreamEnded("lease keep-alive"),
            Ok(Ok(Some(answer))) if answer.ttl() <= 0 => return EtcdError::LeaseLost,
            Ok(Ok(Some(_))) => {}
        }
    }
}

/// Revokes lease `id` (deleting the record); if etcd is unreachable the lease simply expires.
async fn withdraw(config: &EtcdConfig, id: i64, worker: &str) {
    let revoked = async {
        let mut client = connect(config).await?;
        timed(client.lease_revoke(id)).await
    };
    match revoked.await {
        Ok(_) => tracing::info!(%worker, "deregistered"),
        Err(error) => {
            tracing::warn!(%worker, "could not revoke the lease, it will expire: {error}")
        }
    }
}
