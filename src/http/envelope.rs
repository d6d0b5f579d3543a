//! The reply envelope of every HTTP call: `{"code","message","data"}`, HTTP status = code.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode, header};
use serde_json::{Value, json};

use crate::store::StoreError;

pub type Body = Full<Bytes>;

/// A refusal a person can act on.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 from the login throttle).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(401, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => ApiError::new(503, "the server is shutting down"),
            other => {
                tracing::error!("store: {other}");
                match other.unavailable() {
                    // The storage failed, not the request: the same request may work later.
                    Some(text) => ApiError::new(503, text),
                    None => ApiError::new(500, "internal storage error"),
                }
            }
        }
    }
}

pub type ApiResult = Result<Value, ApiError>;

pub fn reply(result: ApiResult) -> Response<Body> {
    match result {
        Ok(data) => envelope(200, "success", data),
        Err(e) => {
            let mut response = envelope(e.code, &e.message, Value::Null);
            if let Some(secs) = e.retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            }
            response
        }
    }
}

pub fn envelope(code: u16, message: &str, data: Value) -> Response<Body> {
    let body = json!({"code": code, "message": message, "data": data}).to_string();
    with_body(code, "application/json", body)
}

pub fn with_body(code: u16, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}
