//! What a registered worker says about itself, and its JSON form (what etcd stores, readable with
//! `etcdctl get --prefix`).

use fovea_proto::worker::v1::WorkerRole;
use serde::{Deserialize, Serialize};

/// A live worker, as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Unique in the cluster; the registry's key.
    pub id: String,
    /// The part of the work it does.
    #[serde(with = "role_serde")]
    pub role: WorkerRole,
    /// Its worker API, `http://host:port`.
    pub address: String,
    /// The model it serves, as clients name it.
    pub model: String,
    /// Devices the model is split over (1: none).
    pub tensor_parallel_size: u32,
    /// How much it can hold.
    pub capacity: WorkerCapacity,
}

/// A worker's fixed capacity (its load is reported separately, over the worker API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCapacity {
    /// KV cache blocks (0 in the vision role).
    pub kv_blocks: u32,
    /// Tokens per forward pass.
    pub max_batch_tokens: u32,
}

/// A role's name on the command line and in records: `full`, `vision`, `prefill` or `decode`.
pub fn role_name(role: WorkerRole) -> &'static str {
    match role {
        WorkerRole::Full => "full",
        WorkerRole::Vision => "vision",
        WorkerRole::Prefill => "prefill",
        WorkerRole::Decode => "decode",
        WorkerRole::Unspecified => "unspecified",
    }
}

/// The role named `name` (see [`role_name`]).
pub fn parse_role(name: &str) -> Result<WorkerRole, String> {
    match name {
        "full" => Ok(WorkerRole::Full),
        "vision" => Ok(WorkerRole::Vision),
        "prefill" => Ok(WorkerRole::Prefill),
        "decode" => Ok(WorkerRole::Decode),
        other => Err(format!(
            "unknown worker role {other:?}; expected full, vision, prefill or decode"
        )),
    }
}

mod role_serde {
    use fovea_proto::worker::v1::WorkerRole;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(role: &WorkerRole, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(super::role_name(*role))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<WorkerRole, D::Error> {
        let name = String::deserialize(deserializer)?;
        super::parse_role(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json_with_role_names() {
        let record = WorkerRecord {
            id: "w1".into(),
            role: WorkerRole::Prefill,
            address: "http://127.0.0.1:50061".into(),
            model: "phi".into(),
            tensor_parallel_size: 2,
            capacity: WorkerCapacity {
                kv_blocks: 4096,
                max_batch_tokens: 512,
            },
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""role":"prefill""#), "{json}");
        assert_eq!(serde_json::from_str::<WorkerRecord>(&json).unwrap(), record);
    }

    #[test]
    fn unknown_role_names_are_rejected_with_the_choices() {
        let error = parse_role("gpu").unwrap_err();
        assert!(error.contains("full, vision, prefill or decode"), "{error}");
        for role in [
            WorkerRole::Full,
            WorkerRole::Vision,
            WorkerRole::Prefill,
            WorkerRole::Decode,
        ] {
            assert_eq!(parse_role(role_name(role)), Ok(role));
        }
    }
}
