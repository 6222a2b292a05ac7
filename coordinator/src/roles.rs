//! The coordinator's workers grouped by role, from a static list of `ROLE=HOST:PORT` entries
//! (`full`, `vision`, `prefill`, `decode`; a bare `http://HOST:PORT` is a full worker).
//!
//! Whole requests and decoding go to full and decode workers, disaggregated prefills to prefill
//! workers, image encodings to vision workers.

use fovea_proto::worker::v1::WorkerRole;

use crate::workers::WorkerPool;

/// One entry of the static worker list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEndpoint {
    pub role: WorkerRole,
    /// `http://host:port`.
    pub address: String,
}

impl WorkerEndpoint {
    /// Parses `ROLE=HOST:PORT`, `ROLE=http://HOST:PORT` or `http://HOST:PORT` (a full worker).
    ///
    /// ```
    /// use fovea_coordinator::roles::WorkerEndpoint;
    /// use fovea_proto::worker::v1::WorkerRole;
    /// let endpoint = WorkerEndpoint::parse("decode=127.0.0.1:7001").unwrap();
    /// assert_eq!((endpoint.role, endpoint.address.as_str()), (WorkerRole::Decode, "http://127.0.0.1:7001"));
    /// ```
    pub fn parse(entry: &str) -> Result<Self, String> {
        let (role, address) = match entry.split_once('=') {
            Some((role, address)) => {
                let role = match role {
                    "full" => WorkerRole::Full,
                    "vision" => WorkerRole::Vision,
                    "prefill" => WorkerRole::Prefill,
                    "decode" => WorkerRole::Decode,
                    other => {
                        return Err(format!(
                            "unknown worker role {other:?} in {entry:?}; expected full, vision, prefill or decode"
                        ));
                    }
                };
                (role, address)
            }
            None => (WorkerRole::Full, entry),
        };
        if address.is_empty() {
            return Err(format!("worker entry {entry:?} has no address"));
        }
        let address = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        Ok(WorkerEndpoint { role, address })
    }
}

/// The `host:port` of an `http://host:port` address, as workers name their peers.
pub fn peer_address(address: &str) -> &str {
    address.split_once("://").map_or(address, |(_, rest)| rest)
}

/// The coordinator's workers by what they do.
#[derive(Clone, Default)]
pub struct RoleWorkers {
    /// Full and decode workers: whole requests, and decoding after a disaggregated prefill.
    pub generate: WorkerPool,
    /// Decode workers only: the targets of KV transfers.
    pub decode: WorkerPool,
    pub prefill: WorkerPool,
    pub vision: WorkerPool,
}

impl RoleWorkers {
    /// Clients for the workers `entries` list (see [`WorkerEndpoint::parse`]); connections are
    /// made lazily.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let endpoints = entries
            .iter()
            .map(|entry| WorkerEndpoint::parse(entry))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = |roles: &[WorkerRole]| {
            let addresses: Vec<String> = endpoints
                .iter()
                .filter(|e| roles.contains(&e.role))
                .map(|e| e.address.clone())
                .collect();
            WorkerPool::new(&addresses).map_err(|e| format!("bad worker address: {e}"))
        };
        Ok(RoleWorkers {
            generate: pool(&[WorkerRole::Full, WorkerRole::Decode])?,
            decode: pool(&[WorkerRole::Decode])?,
            prefill: pool(&[WorkerRole::Prefill])?,
            vision: pool(&[WorkerRole::Vision])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_a_role_or_default_to_full() {
        let full = WorkerEndpoint::parse("http://10.0.0.1:7000").unwrap();
        assert_eq!(
            (full.role, full.address.as_str()),
            (WorkerRole::Full, "http://10.0.0.1:7000")
        );
        let vision = WorkerEndpoint::parse("vision=http://10.0.0.2:7000").unwrap();
        assert_eq!(
            (vision.role, vision.address.as_str()),
            (WorkerRole::Vision, "http://10.0.0.2:7000")
        );
        assert!(
            WorkerEndpoint::parse("gpu=10.0.0.3:7000")
                .unwrap_err()
                .contains("unknown worker role")
        );
        assert!(WorkerEndpoint::parse("decode=").is_err());
        assert_eq!(peer_address("http://10.0.0.1:7000"), "10.0.0.1:7000");
    }
}
