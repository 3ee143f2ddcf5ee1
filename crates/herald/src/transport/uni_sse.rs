//! Unidirectional Server-Sent Events at `/connection/uni_sse`, compatible with
//! Centrifugo's (GET with the JSON ConnectRequest in `cf_connect`, or POST with it as the
//! body; each Push is one `data:` event) and resumable the standard way: every event that
//! moves a stream position carries an `id:` holding all of the connection's positions, so
//! a browser's EventSource that reconnects with `Last-Event-ID` (or a first connect with
//! `last_event_id` in the query) gets exactly the publications it missed, from history,
//! as separate events. When history no longer covers the gap, the connect push says
//! `recovered: false` for that channel. Id format: see [`super::sse_id`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};

use super::{Framing, Initial, parse_sse_id, queue_body, start_session, streaming_headers};
use crate::node::Node;
use crate::protocol::{Encoding, proto};
use crate::session::TransportInfo;

const NAME: &str = "uni_sse";

/// Starts a unidirectional SSE stream.
pub async fn handler(
    State(node): State<Arc<Node>>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !super::origin_allowed(&headers, &node.config.client.allowed_origins) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let raw: &[u8] = if method == Method::POST {
        &body
    } else {
        query
            .get("cf_connect")
            .map(|s| s.as_bytes())
            .unwrap_or(b"{}")
    };
    let req: proto::ConnectRequest =
        match crate::protocol::json::from_slice(raw, node.config.client.max_json_depth) {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("malformed cf_connect: {e}"),
                )
                    .into_response();
            }
        };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .or_else(|| query.get("last_event_id").map(String::as_str))
        .unwrap_or("");
    let resume = parse_sse_id(last_event_id);
    let info = TransportInfo {
        name: NAME,
        encoding: Encoding::UniJson,
        unidirectional: true,
        emulation: false,
        positions_in_stream: true,
    };
    let handle = start_session(
        node.clone(),
        info,
        &headers,
        Initial::Connect(Box::new(req), resume),
    )
    .await;
    (
        streaming_headers("text/event-stream"),
        queue_body(&node, handle, Framing::SseWithIds, NAME),
    )
        .into_response()
}
