//! HTTP answers that are not successes, and the helpers that render any answer.
//!
//! Invariants: every error is JSON `{error: {code, message}}` (plus route-specific detail
//! fields such as `holder`) with a status that matches it; [`registry_error`] is the one
//! mapping from registry errors to statuses, [`denied`] the one from security refusals.
//! Messages never carry server paths (registry and store errors name bare files).

use super::security::Denied;
use crate::kernel::flock::FlockError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use bytes::Bytes;
use serde::Serialize;
use warp::http::{HeaderValue, StatusCode};

pub type Response = warp::reply::Response;

/// A typed API error; rendered as `{error: {code, message}}` plus optional detail.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra top-level fields (an object), e.g. `{"holder": ...}` for a busy lock.
    pub detail: Option<serde_json::Value>,
    /// Seconds for a `Retry-After` header (503s that will pass).
    pub retry_after: Option<u64>,
}

/// The error body, for the API document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    /// Stable machine-readable code, e.g. `busy`, `invalid_id`, `lease_gone`.
    pub code: String,
    /// One line for humans; names the lock it is about.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.detail, body.as_object_mut())
        {
            obj.extend(extra);
        }
        let mut resp = json_response(self.status, &body);
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(s));
        }
        resp
    }
}

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!(
            "{{\"error\":{{\"code\":\"internal\",\"message\":\"cannot render response: {e}\"}}}}"
        )
        .into_bytes()
    });
    bytes_response(status, "application/json", Bytes::from(body))
}

pub fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    bytes_response(status, content_type, Bytes::from(body))
}

fn bytes_response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    resp
}

/// The one mapping from security refusals to HTTP.
pub fn denied(d: Denied) -> ApiError {
    match d {
        Denied::ForeignHost(h) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!("host {h:?} is not this service; add it with --allow-host if it is"),
        ),
        Denied::ForeignOrigin(o) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            format!("requests from origin {o:?} are not accepted"),
        ),
        Denied::Unauthenticated => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid token is needed (Authorization: Bearer TOKEN or X-Lockledger-Token)",
        ),
        Denied::NotAdmin => ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_only",
            "this needs the admin token",
        ),
        Denied::NoJsonOrHeader => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json_required",
            "POST and DELETE need Content-Type: application/json or an X-Lockledger-Client header",
        ),
    }
}

/// The one mapping from registry errors to HTTP.
pub fn registry_error(e: RegistryError) -> ApiError {
    let msg = e.to_string();
    match e {
        RegistryError::InvalidId(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", msg),
        RegistryError::BadRequest(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg),
        RegistryError::Busy { holder, .. } => ApiError::new(StatusCode::CONFLICT, "busy", msg)
            .with_detail(serde_json::json!({ "holder": holder })),
        RegistryError::TokenMismatch { current, .. } => {
            ApiError::new(StatusCode::CONFLICT, "token_mismatch", msg)
                .with_detail(serde_json::json!({ "current_token": current }))
        }
        RegistryError::TooManyWaiters { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_waiters", msg).retry_after(1)
        }
        RegistryError::NotClearable { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_clearable", msg)
        }
        RegistryError::NotHolding { .. } => ApiError::new(StatusCode::CONFLICT, "not_holding", msg),
        RegistryError::NotHeld { .. } => ApiError::new(StatusCode::CONFLICT, "not_held", msg),
        RegistryError::LeaseGone { .. } | RegistryError::Revoked { .. } => {
            ApiError::new(StatusCode::GONE, "lease_gone", msg)
        }
        RegistryError::UnknownLease(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_lease", msg)
        }
        RegistryError::Store(StoreError::Busy) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy_database",
            "the database is busy; retry shortly",
        )
        .retry_after(1),
        RegistryError::Store(StoreError::Locked(_)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy_database", msg).retry_after(1)
        }
        RegistryError::Store(StoreError::Lost(_)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable", msg)
        }
        RegistryError::Unsupported(_) => {
            ApiError::new(StatusCode::NOT_IMPLEMENTED, "unsupported", msg)
        }
        RegistryError::Store(StoreError::Shared(_)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable", msg)
                .retry_after(1)
        }
        RegistryError::Flock(FlockError::NotRegular { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "unsafe_lock_file", msg)
        }
        RegistryError::Store(_) | RegistryError::Flock(_) => {
            log::error!("internal error: {msg}");
            ApiError::internal(msg)
        }
    }
}
