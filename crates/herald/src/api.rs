//! The server API at `POST /api/<method>`, shaped like Centrifugo's HTTP server API so its
//! server SDKs work: JSON in, `{"result": ...}` or `{"error": {"code", "message"}}` out.
//! Authentication with `X-API-Key: KEY` or `Authorization: apikey KEY`; a wrong or missing
//! key is 401, a body that is not the method's JSON is 400 with what is wrong.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::engine::{ClientInfo, HistoryFilter, Publication, StreamPosition};
use crate::error::{ClientError, Disconnect};
use crate::node::{Node, NodeError};
use crate::protocol::DecodeError;
use crate::request_body::error_response;

fn api_error(e: ClientError) -> Value {
    json!({"error": {"code": e.code, "message": e.message}})
}

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
    let result = match method.as_str() {
        "publish" => call(body, depth, |r| publish(&node, r)).await,
        "broadcast" => call(body, depth, |r| broadcast(&node, r)).await,
        "subscribe" => call(body, depth, |r| subscribe(&node, r)).await,
        "unsubscribe" => call(body, depth, |r| unsubscribe(&node, r)).await,
        "disconnect" => call(body, depth, |r| disconnect(&node, r)).await,
        "refresh" => call(body, depth, |r| refresh(&node, r)).await,
        "presence" => call(body, depth, |r| presence(&node, r)).await,
        "presence_stats" => call(body, depth, |r| presence_stats(&node, r)).await,
        "history" => call(body, depth, |r| history(&node, r)).await,
        "history_remove" => call(body, depth, |r| history_remove(&node, r)).await,
        "channels" => call(body, depth, |r| channels(&node, r)).await,
        "info" => call(body, depth, |r: Empty| info(&node, r)).await,
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

/// Parses the body (400 with serde's message on failure) and runs the method; method-level
/// failures are `{"error": ...}` with status 200, as in Centrifugo.
async fn call<R, F, Fut>(body: &[u8], max_depth: usize, f: F) -> Result<Value, String>
where
    R: DeserializeOwned,
    F: FnOnce(R) -> Fut,
    Fut: std::future::Future<Output = Result<Value, ClientError>>,
{
    let req: R = crate::protocol::json::from_slice(body, max_depth).map_err(|e| match e {
        DecodeError::Json(e) => format!("bad request body: {e}"),
        e => format!("bad request body: {e} (http_api.max_json_depth)"),
    })?;
    Ok(match f(req).await {
        Ok(result) => json!({ "result": result }),
        Err(e) => api_error(e),
    })
}

#[derive(Deserialize)]
struct Empty {}

#[derive(Deserialize)]
struct PublishRequest {
    channel: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn payload(
    data: &Option<Box<RawValue>>,
    b64data: &Option<String>,
) -> Result<bytes::Bytes, ClientError> {
    if let Some(b64) = b64data {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(bytes::Bytes::from)
            .map_err(|_| ClientError::BAD_REQUEST.with_message("b64data is not valid base64"));
    }
    match data {
        Some(raw) => Ok(bytes::Bytes::copy_from_slice(raw.get().as_bytes())),
        None => Err(ClientError::BAD_REQUEST.with_message("data required")),
    }
}

async fn publish_one(
    node: &Node,
    channel: &str,
    data: bytes::Bytes,
    req_tags: HashMap<String, String>,
    skip_history: bool,
) -> Result<Value, ClientError> {
    let pos = node
        .publish(channel, data, None, req_tags, skip_history)
        .await?;
    let mut result = serde_json::Map::new();
    if pos.offset > 0 {
        result.insert("offset".into(), json!(pos.offset));
        result.insert("epoch".into(), json!(pos.epoch));
    }
    Ok(Value::Object(result))
}

async fn publish(node: &Node, r: PublishRequest) -> Result<Value, ClientError> {
    let _ = &r.idempotency_key;
    let data = payload(&r.data, &r.b64data)?;
    publish_one(node, &r.channel, data, r.tags, r.skip_history).await
}

#[derive(Deserialize)]
struct BroadcastRequest {
    channels: Vec<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
}

async fn broadcast(node: &Node, r: BroadcastRequest) -> Result<Value, ClientError> {
    if r.channels.is_empty() {
        return Err(ClientError::BAD_REQUEST.with_message("channels required"));
    }
    let data = payload(&r.data, &r.b64data)?;
    let mut responses = Vec::with_capacity(r.channels.len());
    for ch in &r.channels {
        responses.push(
            match publish_one(node, ch, data.clone(), r.tags.clone(), r.skip_history).await {
                Ok(v) => json!({ "result": v }),
                Err(e) => api_error(e),
            },
        );
    }
    Ok(json!({ "responses": responses }))
}

#[derive(Deserialize)]
struct UserChannelRequest {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

async fn subscribe(node: &Node, r: UserChannelRequest) -> Result<Value, ClientError> {
    node.subscribe_user(&r.user, r.client.as_deref(), &r.channel)
        .await?;
    Ok(json!({}))
}

async fn unsubscribe(node: &Node, r: UserChannelRequest) -> Result<Value, ClientError> {
    node.unsubscribe_user(&r.user, r.client.as_deref(), &r.channel)
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct DisconnectSpec {
    code: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectRequest {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<DisconnectSpec>,
}

async fn disconnect(node: &Node, r: DisconnectRequest) -> Result<Value, ClientError> {
    let d = match r.disconnect {
        Some(spec) => {
            if !(3000..5000).contains(&spec.code) {
                return Err(
                    ClientError::BAD_REQUEST.with_message("disconnect.code must be in 3000..4999")
                );
            }
            let reason: String = spec.reason.chars().take(100).collect();
            Disconnect::custom(spec.code, reason)
        }
        None => Disconnect::FORCE_NO_RECONNECT,
    };
    node.disconnect_user(&r.user, r.client.as_deref(), &r.whitelist, &d)
        .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct RefreshRequest {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: Option<i64>,
}

async fn refresh(node: &Node, r: RefreshRequest) -> Result<Value, ClientError> {
    node.refresh_user(
        &r.user,
        r.client.as_deref(),
        r.expire_at.filter(|at| *at > 0),
        r.expired,
    )
    .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ChannelRequest {
    channel: String,
}

fn info_json(i: &ClientInfo) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("client".into(), json!(i.client));
    m.insert("user".into(), json!(i.user));
    for (k, v) in [("conn_info", &i.conn_info), ("chan_info", &i.chan_info)] {
        if !v.is_empty() {
            m.insert(k.into(), serde_json::from_slice(v).unwrap_or(Value::Null));
        }
    }
    Value::Object(m)
}

async fn presence(node: &Node, r: ChannelRequest) -> Result<Value, ClientError> {
    let p = node.presence(&r.channel).await?;
    let map: serde_json::Map<String, Value> =
        p.iter().map(|(k, v)| (k.clone(), info_json(v))).collect();
    Ok(json!({ "presence": map }))
}

async fn presence_stats(node: &Node, r: ChannelRequest) -> Result<Value, ClientError> {
    let (c, u) = node.presence_stats(&r.channel).await?;
    Ok(json!({ "num_clients": c, "num_users": u }))
}

#[derive(Deserialize)]
struct SinceSpec {
    offset: u64,
    epoch: String,
}

#[derive(Deserialize)]
struct HistoryRequest {
    channel: String,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    since: Option<SinceSpec>,
    #[serde(default)]
    reverse: bool,
}

fn publication_json(p: &Publication) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "data".into(),
        serde_json::from_slice(&p.data).unwrap_or_else(|_| json!(String::from_utf8_lossy(&p.data))),
    );
    if let Some(info) = &p.info {
        m.insert("info".into(), info_json(info));
    }
    if p.offset > 0 {
        m.insert("offset".into(), json!(p.offset));
    }
    if !p.tags.is_empty() {
        m.insert("tags".into(), json!(p.tags));
    }
    Value::Object(m)
}

async fn history(node: &Node, r: HistoryRequest) -> Result<Value, ClientError> {
    let filter = HistoryFilter {
        since: r.since.map(|s| StreamPosition {
            offset: s.offset,
            epoch: s.epoch,
        }),
        limit: match r.limit {
            None | Some(0) => Some(0),
            Some(n) if n < 0 => None,
            Some(n) => Some(n as usize),
        },
        reverse: r.reverse,
    };
    let h = node
        .history(&r.channel, &filter)
        .await
        .map_err(|e| match e {
            NodeError::UnrecoverablePosition => ClientError::UNRECOVERABLE_POSITION,
            other => other.into(),
        })?;
    let pubs: Vec<Value> = h.publications.iter().map(|p| publication_json(p)).collect();
    Ok(json!({ "publications": pubs, "offset": h.position.offset, "epoch": h.position.epoch }))
}

async fn history_remove(node: &Node, r: ChannelRequest) -> Result<Value, ClientError> {
    node.remove_history(&r.channel).await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ChannelsRequest {
    #[serde(default)]
    pattern: String,
}

async fn channels(node: &Node, r: ChannelsRequest) -> Result<Value, ClientError> {
    let map: serde_json::Map<String, Value> = node
        .channels()
        .into_iter()
        .filter(|(name, _)| r.pattern.is_empty() || crate::glob::matches(&r.pattern, name))
        .map(|(name, n)| (name, json!({ "num_clients": n })))
        .collect();
    Ok(json!({ "channels": map }))
}

async fn info(node: &Node, _r: Empty) -> Result<Value, ClientError> {
    Ok(json!({ "nodes": node.nodes() }))
}
