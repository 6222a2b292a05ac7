//! The SDK's one error type: gRPC statuses mapped to variants a caller can match on, plus the
//! client-side failures (bad address, unreadable image file, a stream that broke its contract).

use std::path::PathBuf;

use tonic::Code;

/// Everything a Fovea client call can fail with.
///
/// Server statuses keep their message, which says what to fix:
///
/// ```
/// use fovea_client::ClientError;
/// let error = ClientError::from(tonic::Status::invalid_argument("top_p must be in (0, 1]"));
/// assert!(matches!(error, ClientError::InvalidArgument(ref m) if m.contains("top_p")));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid gRPC endpoint URI.
    #[error("invalid server address {address:?}: {source}")]
    InvalidAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// An image file named in a request could not be read.
    #[error("cannot read image {path}: {source}")]
    ImageFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The request is malformed: a bad message, image or sampling value, or a prompt longer than
    /// the context (INVALID_ARGUMENT).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The requested model is not served (NOT_FOUND).
    #[error("not found: {0}")]
    NotFound(String),
    /// The server's queue is full; try again later (RESOURCE_EXHAUSTED).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The server or its workers cannot be reached (UNAVAILABLE, or a connection that broke
    /// under the call), after any retries.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call's deadline passed (DEADLINE_EXCEEDED).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The call was cancelled (CANCELLED).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The server failed (INTERNAL).
    #[error("internal server error: {0}")]
    Internal(String),
    /// Any other gRPC status.
    #[error("{code:?}: {message}")]
    Status { code: Code, message: String },
    /// The server's stream broke the API's contract (an empty message, no final message, or
    /// something after it).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the call may succeed if repeated unchanged before any token arrived: the server
    /// is starting, restarting or briefly unreachable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unavailable(_))
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        if let Some(cause) = transport_failure(&status) {
            return ClientError::Unavailable(format!("{}: {cause}", status.message()));
        }
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::NotFound => ClientError::NotFound(message),
            Code::ResourceExhausted => ClientError::ResourceExhausted(message),
            Code::Unavailable => ClientError::Unavailable(message),
            Code::DeadlineExceeded => ClientError::DeadlineExceeded(message),
            Code::Cancelled => ClientError::Cancelled(message),
            Code::Internal => ClientError::Internal(message),
            code => ClientError::Status { code, message },
        }
    }
}

/// What broke, when `status` is what tonic makes of a connection that failed under the call (a
/// server that closed it, or went away): UNKNOWN "transport error", or CANCELLED "operation was
/// canceled" for a request the connection dropped before sending it. The causes below the
/// transport error, innermost last.
fn transport_failure(status: &tonic::Status) -> Option<String> {
    if !matches!(status.code(), Code::Unknown | Code::Cancelled) {
        return None;
    }
    let mut transport = None;
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return None;
        }
        if transport.is_none() && error.is::<tonic::transport::Error>() {
            transport = Some(Vec::new());
        } else if let Some(causes) = &mut transport {
            causes.push(error.to_string());
        }
        source = error.source();
    }
    transport.map(|causes| causes.join(": "))
}
