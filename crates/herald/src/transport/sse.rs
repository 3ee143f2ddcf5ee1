//! Bidirectional emulation over Server-Sent Events at `/connection/sse`, as the centrifuge
//! SDKs' `sse` transport drives it: the first commands come in the `cf_connect` query
//! parameter (JSON lines) or a POST body; replies and pushes stream back as SSE `data:`
//! events, one JSON message each; later commands come through `POST /emulation`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};

use super::{Framing, Initial, queue_body, start_session, streaming_headers};
use crate::node::Node;
use crate::protocol::Encoding;
use crate::session::TransportInfo;

const NAME: &str = "sse";

/// Starts an SSE emulation session.
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
    let initial = if method == Method::POST {
        body
    } else {
        match query.get("cf_connect") {
            Some(c) => Bytes::from(c.clone().into_bytes()),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "missing cf_connect query parameter",
                )
                    .into_response();
            }
        }
    };
    let info = TransportInfo {
        name: NAME,
        encoding: Encoding::Json,
        unidirectional: false,
        emulation: true,
        positions_in_stream: false,
    };
    let handle = start_session(node.clone(), info, &headers, Initial::Frame(initial)).await;
    (
        streaming_headers("text/event-stream"),
        queue_body(&node, handle, Framing::SseData, NAME),
    )
        .into_response()
}
