//! Connections from this worker to its peers (vision workers it fetches features from, decode
//! workers it pushes KV to), one lazily connected channel per address, and the status a failed
//! peer turns into.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use fovea_proto::worker::FAILED_PEER_METADATA;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long connecting to a peer may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Channels to peers by `host:port`; a channel reconnects by itself after its peer restarts.
#[derive(Default)]
pub struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerChannels {
    /// The channel to `address` (`host:port`).
    pub fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Status::invalid_argument(format!("bad peer address {address:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

/// The status for `what` failing at peer `address` with `status`. Errors in the request itself
/// (a bad image, an image the peer has no features of, a geometry mismatch) keep their code; any
/// other failure is UNAVAILABLE, naming the peer in the message and in [`FAILED_PEER_METADATA`]
/// so that the coordinator retries without it.
pub fn peer_status(address: &str, what: &str, status: &Status) -> Status {
    let message = format!("{what} at {address} failed: {}", status.message());
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::ResourceExhausted => Status::new(status.code(), message),
        _ => peer_failed(address, message),
    }
}

/// An UNAVAILABLE status blaming peer `address`.
pub fn peer_failed(address: &str, message: String) -> Status {
    let mut status = Status::unavailable(message);
    if let Ok(value) = address.parse() {
        status.metadata_mut().insert(FAILED_PEER_METADATA, value);
    }
    status
}
