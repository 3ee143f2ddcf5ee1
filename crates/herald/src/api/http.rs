//! The server API at `POST /api/<method>`, shaped like Centrifugo's HTTP server API so its
//! server SDKs work: JSON in, `{"result": ...}` or `{"error": {"code", "message"}}` out
//! (`batch`: `{"replies": [...]}`). Authentication with `X-API-Key: KEY` or
//! `Authorization: apikey KEY`; a wrong or missing key is 401, a body that is not the
//! method's JSON is 400 with what is wrong. This module only decodes and encodes; the
//! methods are [`super::Executor`]'s.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{ApiError, Executor};
use crate::error::ClientError;
use crate::node::Node;
use crate::protocol::DecodeError;
use crate::request_body::error_response;

pub(crate) fn authorized(node: &Node, headers: &HeaderMap) -> bool {
    let cfg = &node.config.http_api;
    if cfg.insecure {
        return true;
    }
    key_matches(headers, &cfg.key)
}

/// Whether the request carries `key` (`X-API-Key`, or `Authorization: apikey <key>`); never
/// for an empty key.
pub(crate) fn key_matches(headers: &HeaderMap, key: &str) -> bool {
    if key.is_empty() {
        return false;
    }
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("apikey ").map(|k| k.trim().to_string()))
        });
    given.is_some_and(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware in front of [`handler`]: answers 401 from the headers alone, before any of
/// the body is read, so an unauthenticated client can make Herald hold nothing.
pub async fn require_key(
    State(node): State<Arc<Node>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !authorized(&node, req.headers()) {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized: missing or wrong API key",
        );
    }
    next.run(req).await
}

/// Entry point for every API method; the key was checked by [`require_key`] and the body
/// read under `http_api.max_request_body_size` before this runs.
pub async fn handler(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    body: Bytes,
) -> Response {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let depth = node.config.http_api.max_json_depth;
    let ex = Executor::new(node);
    let result = match method.as_str() {
        "publish" => call(body, depth, |r| ex.publish(r)).await,
        "broadcast" => call(body, depth, |r| ex.broadcast(r)).await,
        "subscribe" => call(body, depth, |r| ex.subscribe(r)).await,
        "unsubscribe" => call(body, depth, |r| ex.unsubscribe(r)).await,
        "disconnect" => call(body, depth, |r| ex.disconnect(r)).await,
        "refresh" => call(body, depth, |r| ex.refresh(r)).await,
        "presence" => call(body, depth, |r| ex.presence(r)).await,
        "presence_stats" => call(body, depth, |r| ex.presence_stats(r)).await,
        "history" => call(body, depth, |r| ex.history(r)).await,
        "history_remove" => call(body, depth, |r| ex.history_remove(r)).await,
        "channels" => call(body, depth, |r| ex.channels(r)).await,
        "info" => call(body, depth, |r| ex.info(r)).await,
        "batch" => match parse(body, depth) {
            Ok(r) => serde_json::to_value(ex.batch(r).await).map_err(|e| e.to_string()),
            Err(msg) => Err(msg),
        },
        _ => {
            return error_response(
                StatusCode::NOT_FOUND,
                format!("unknown API method \"{method}\""),
            );
        }
    };
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(msg) => error_response(StatusCode::BAD_REQUEST, msg),
    }
}

/// The body as `R`, or serde's message of what is wrong.
fn parse<R: DeserializeOwned>(body: &[u8], max_depth: usize) -> Result<R, String> {
    crate::protocol::json::from_slice(body, max_depth).map_err(|e| match e {
        DecodeError::Json(e) => format!("bad request body: {e}"),
        e => format!("bad request body: {e} (http_api.max_json_depth)"),
    })
}

/// Parses the body (400 with serde's message on failure) and runs the method; method-level
/// failures are `{"error": ...}` with status 200, as in Centrifugo.
async fn call<R, T, F, Fut>(body: &[u8], max_depth: usize, f: F) -> Result<Value, String>
where
    R: DeserializeOwned,
    T: Serialize,
    F: FnOnce(R) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let req: R = parse(body, max_depth)?;
    Ok(match f(req).await {
        Ok(result) => json!({ "result": result }),
        Err(e) => json!({ "error": ApiError::from(e) }),
    })
}
