//! `POST /emulation`: commands from emulation clients (HTTP streaming, SSE) for a session
//! that streams on another request. The body is `{session, node, data}` (JSON, `data` the
//! JSON lines as a string) or an EmulationRequest (Protobuf, `data` length-prefixed
//! commands). The node hands the commands to the session, on this node or, through the
//! engine's controller, on the node that holds it (so emulation needs no sticky sessions).
//! The answer is the same whichever node the request reached: 200 when the session took
//! the commands, 204 when the node named has no such session (any more; Centrifugo answers
//! 204 too), 404 when no live node has that id (the client then reconnects), 503 when the
//! commands could not be sent to that node or it did not answer in time.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use prost::Message;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::is_protobuf_request;
use crate::node::{Emulation, Node};
use crate::protocol::proto::EmulationRequest;

#[derive(Deserialize)]
struct JsonEmulationRequest {
    #[serde(default)]
    session: String,
    #[serde(default)]
    node: String,
    data: Box<RawValue>,
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

/// Routes commands to the session that owns them.
pub async fn handler(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    // A page from a foreign origin may not drive a session, even one whose id it learnt.
    if !super::origin_allowed(&headers, &node.config.client.allowed_origins) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let (session, target, data) = if is_protobuf_request(&headers) {
        match EmulationRequest::decode(body) {
            Ok(r) => (r.session, r.node, r.data),
            Err(e) => return bad_request(format!("malformed EmulationRequest: {e}")),
        }
    } else {
        let depth = node.config.client.max_json_depth;
        let r: JsonEmulationRequest = match crate::protocol::json::from_slice(&body, depth) {
            Ok(r) => r,
            Err(e) => return bad_request(format!("malformed emulation request: {e}")),
        };
        // The SDKs send the JSON lines as a string; raw JSON is accepted too.
        let data = match serde_json::from_str::<String>(r.data.get()) {
            Ok(s) => Bytes::from(s.into_bytes()),
            Err(_) => Bytes::copy_from_slice(r.data.get().as_bytes()),
        };
        (r.session, r.node, data)
    };
    match node.emulation(&target, &session, data).await {
        Ok(Emulation::Delivered) => StatusCode::OK.into_response(),
        Ok(Emulation::SessionGone) => StatusCode::NO_CONTENT.into_response(),
        Ok(Emulation::UnknownNode) => (StatusCode::NOT_FOUND, "unknown node").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
