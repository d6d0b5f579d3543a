//! Request parameters: the query string and a form or JSON body, merged into one map, and the
//! access token from `Authorization: Bearer` or `?access_token=`.

use std::collections::HashMap;
use std::net::IpAddr;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, header};
use serde_json::Value;

use super::envelope::ApiError;
use crate::app::App;
use crate::auth::Claims;

#[derive(Debug, Default)]
pub struct Params {
    values: HashMap<String, String>,
    bearer: Option<String>,
    /// The client's address (for the login throttle).
    pub peer: Option<IpAddr>,
}

impl Params {
    /// Reads the query and a body of at most `max_body` bytes (413 beyond).
    pub async fn from_request(req: Request<Incoming>, max_body: usize) -> Result<Params, ApiError> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_string());
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let query = req.uri().query().map(str::to_owned);
        let body = Limited::new(req.into_body(), max_body)
            .collect()
            .await
            .map_err(|_| ApiError::new(413, format!("request body over {max_body} bytes")))?
            .to_bytes();
        let mut params = Params::parse(content_type.as_deref(), query.as_deref(), &body)?;
        params.bearer = bearer;
        Ok(params)
    }

    /// The parameters of a query string and a body of the given content type; no I/O, so the
    /// fuzz target and its corpus test call it with arbitrary input.
    pub fn parse(content_type: Option<&str>, query: Option<&str>, body: &[u8]) -> Result<Params, ApiError> {
        let mut params = Params::default();
        if let Some(query) = query {
            params.values.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        let is_json = content_type.map(|v| v.starts_with("application/json"));
        let body_is_json = is_json.unwrap_or_else(|| body.first() == Some(&b'{'));
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(params);
        }
        if body_is_json {
            let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
                return Err(ApiError::bad_request("the body is not a JSON object"));
            };
            for (key, value) in fields {
                let text = match value {
                    Value::Null => continue,
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                params.values.insert(key, text);
            }
        } else {
            params.values.extend(form_urlencoded::parse(body).into_owned());
        }
        Ok(params)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn require(&self, key: &str) -> Result<&str, ApiError> {
        self.get(key).filter(|v| !v.is_empty()).ok_or_else(|| ApiError::bad_request(format!("`{key}` is required")))
    }

    /// An optional unsigned number.
    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("`{key}` must be a whole number"))),
        }
    }

    pub fn require_number(&self, key: &str) -> Result<u64, ApiError> {
        self.number(key)?.ok_or_else(|| ApiError::bad_request(format!("`{key}` is required")))
    }

    /// The `Authorization: Bearer` credential alone: the only place an admin secret is taken
    /// from (a query string or a body lands in proxy and access logs).
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref().filter(|t| !t.is_empty())
    }

    /// A user's access token, from the header or (for WebSocket-era clients) `?access_token=`.
    pub fn token(&self) -> Option<&str> {
        self.bearer.as_deref().or_else(|| self.get("access_token")).filter(|t| !t.is_empty())
    }

    /// The signed-in user, or 401.
    pub fn user(&self, app: &App) -> Result<Claims, ApiError> {
        let token = self.token().ok_or_else(|| ApiError::unauthorized("an access token is required"))?;
        app.authenticate(token).ok_or_else(|| ApiError::unauthorized("the access token is invalid, expired or revoked"))
    }
}
