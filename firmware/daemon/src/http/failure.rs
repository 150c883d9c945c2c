//! API failures: an [`ApiError`] with its status, and the status code of each [`CoreError`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use isthmus_api::ApiError;

use crate::core::CoreError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl Failure {
    /// A failure with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure(ApiError {
            status: status.as_u16(),
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
        })
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    /// 404 with a message.
    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// 500 with a message (the daemon logs the cause).
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

impl From<CoreError> for Failure {
    fn from(e: CoreError) -> Failure {
        let (status, code) = match &e {
            CoreError::InvalidConfig { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-config"),
            CoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            CoreError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            CoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            CoreError::ApplyFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "apply-failed"),
            CoreError::PluginRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "plugin-refused"),
            CoreError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            CoreError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut f = Failure::new(status, code, e.to_string());
        if let CoreError::InvalidConfig { issues, .. } = e {
            f.0.details = issues;
        }
        f
    }
}
