//! Errors of the HTTP API: every failure is an HTTP status with an OpenAI-style body
//! `{"error": {"message", "type", "code"}}`. gRPC statuses from the `Generation` service are mapped
//! here, at one boundary.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

use super::types::{ErrorBody, ErrorDetail};

/// A failed request, ready to be sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Code,
    message: String,
}

impl ApiError {
    /// A request the client must fix (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: Code::InvalidArgument,
            message: message.into(),
        }
    }

    /// A request whose body the HTTP layer refused (too large, unreadable), with its status.
    pub fn unreadable_body(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: Code::InvalidArgument,
            message: message.into(),
        }
    }

    /// The body this error is sent with; also the payload of an error event in a stream.
    pub fn body(&self) -> ErrorBody {
        let kind = match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "invalid_request_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            _ => "server_error",
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind,
                code: code_name(self.code),
            },
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let http = match status.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status: http,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        super::json(self.status, &self.body())
    }
}

/// The gRPC code's name as it appears in the `code` field, e.g. `resource_exhausted`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
