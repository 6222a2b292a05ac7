//! The in-process registry: records in memory, for a coordinator and workers that share one
//! process (`fovea serve`). A record is live exactly as long as its registration.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::record::WorkerRecord;
use crate::registry::{Members, Registration, Registry};

/// Records held in this process.
#[derive(Debug, Clone)]
pub struct LocalRegistry {
    members: Arc<watch::Sender<Members>>,
}

impl LocalRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        LocalRegistry {
            members: Arc::new(watch::Sender::new(Members::default())),
        }
    }
}

impl Default for LocalRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// `members` with `record` put in (`Some`) or the record with `id` taken out (`None`).
fn with_change(members: &Members, id: &str, record: Option<WorkerRecord>) -> Members {
    let mut changed: BTreeMap<String, WorkerRecord> = (**members).clone();
    match record {
        Some(record) => changed.insert(id.to_string(), record),
        None => changed.remove(id),
    };
    Arc::new(changed)
}

impl Registry for LocalRegistry {
    fn register(&self, record: WorkerRecord) -> Registration {
        let members = Arc::clone(&self.members);
        Registration::spawn(move |stopped, registered| async move {
            let id = record.id.clone();
            members.send_modify(|now| *now = with_change(now, &id, Some(record)));
            registered.send_replace(true);
            let _ = stopped.await;
            members.send_modify(|now| *now = with_change(now, &id, None));
            registered.send_replace(false);
        })
    }

    fn members(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use fovea_proto::worker::v1::WorkerRole;

    use super::*;
    use crate::record::WorkerCapacity;

    fn record(id: &str) -> WorkerRecord {
        WorkerRecord {
            id: id.into(),
            role: WorkerRole::Full,
            address: format!("http://{id}"),
            model: "m".into(),
            tensor_parallel_size: 1,
            capacity: WorkerCapacity {
                kv_blocks: 16,
                max_batch_tokens: 64,
            },
        }
    }

    #[tokio::test]
    async fn records_are_live_while_registered_and_gone_when_withdrawn_or_dropped() {
        let registry = LocalRegistry::new();
        let mut members = registry.members();
        let mut first = registry.register(record("a"));
        first.registered().await;
        let second = registry.register(record("b"));
        let view = members.wait_for(|m| m.len() == 2).await.unwrap().clone();
        assert_eq!(view["a"], record("a"));
        first.withdraw().await;
        assert_eq!(
            members.borrow_and_update().keys().collect::<Vec<_>>(),
            ["b"]
        );
        drop(second);
        members.wait_for(|m| m.is_empty()).await.unwrap();
    }
}
