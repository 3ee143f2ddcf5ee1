//! Bidirectional emulation over HTTP streaming at `/connection/http_stream`, as the
//! centrifuge SDKs' `http_stream` transport drives it: the POST body carries the first
//! commands (JSON lines, or length-prefixed Protobuf with `Content-Type:
//! application/octet-stream`); the response streams replies and pushes in the same
//! encoding; later commands come through `POST /emulation`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};

use super::{
    Framing, Initial, encoding_for, is_protobuf_request, queue_body, start_session,
    streaming_headers,
};
use crate::node::Node;
use crate::session::TransportInfo;

const NAME: &str = "http_stream";

/// Starts an HTTP-streaming session.
pub async fn handler(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    if !super::origin_allowed(&headers, &node.config.client.allowed_origins) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let protobuf = is_protobuf_request(&headers);
    let encoding = encoding_for(protobuf, false);
    let info = TransportInfo {
        name: NAME,
        encoding,
        unidirectional: false,
        emulation: true,
        positions_in_stream: false,
    };
    let handle = start_session(node.clone(), info, &headers, Initial::Frame(body)).await;
    let (content_type, framing) = if protobuf {
        ("application/octet-stream", Framing::Delimited)
    } else {
        ("application/json", Framing::Lines)
    };
    (
        streaming_headers(content_type),
        queue_body(&node, handle, framing, NAME),
    )
        .into_response()
}
