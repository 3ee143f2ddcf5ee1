//! Unidirectional HTTP streaming at `/connection/uni_http_stream`, compatible with
//! Centrifugo's: the POST body is a JSON ConnectRequest; the response is newline-delimited
//! JSON, one Push per line (connect push first, `{}` as a ping), so `curl -N` shows it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};

use super::{Framing, Initial, queue_body, start_session, streaming_headers};
use crate::node::Node;
use crate::protocol::{Encoding, proto};
use crate::session::TransportInfo;

const NAME: &str = "uni_http_stream";

/// Starts a unidirectional HTTP stream.
pub async fn handler(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    if !super::origin_allowed(&headers, &node.config.client.allowed_origins) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let req: proto::ConnectRequest =
        match crate::protocol::json::from_slice(body, node.config.client.max_json_depth) {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("malformed connect request: {e}"),
                )
                    .into_response();
            }
        };
    let info = TransportInfo {
        name: NAME,
        encoding: Encoding::UniJson,
        unidirectional: true,
        emulation: false,
        positions_in_stream: false,
    };
    let handle = start_session(
        node.clone(),
        info,
        &headers,
        Initial::Connect(Box::new(req), Default::default()),
    )
    .await;
    (
        streaming_headers("application/json"),
        queue_body(&node, handle, Framing::Lines, NAME),
    )
        .into_response()
}
