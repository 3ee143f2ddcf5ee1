//! Request bodies, read in full before a handler runs, within a size limit and a deadline.
//!
//! Every route that takes a body (server API, emulation, the connect requests of the HTTP
//! transports, the console and demo) goes through [`BodyLimit`]: a `Content-Length` above
//! the limit is answered 413 before a byte is read, a body that grows past it is cut at the
//! limit (413), and one that has not arrived in full within
//! `http_server.request_body_timeout` is answered 408. The connection is closed after such
//! an answer (hyper does not reuse a connection whose request body was not read), so a
//! client that trickles bytes holds a connection for that long at most and never more than
//! the limit in memory. Errors use the server API's JSON envelope
//! (`{"error": {"code", "message"}}`) and name the config key that sets the limit.
//!
//! Checks that need only the headers (the API key) run before this layer, so an
//! unauthenticated body is never read at all.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// The body rules of one route.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    /// Largest body, bytes.
    pub max_size: usize,
    /// The config key of `max_size`, named in the 413 answer.
    pub key: &'static str,
    /// Time the whole body has to arrive, from the moment its headers were read.
    pub timeout: Duration,
}

/// The answer of a request whose body breaks the rules, in the API's error envelope.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({
            "error": {"code": status.as_u16(), "message": message.into()}
        })),
    )
        .into_response()
}

impl BodyLimit {
    /// `route` with its body read under these rules (axum's own default limit, which
    /// would cut the body earlier, is turned off).
    pub fn apply<S: Clone + Send + Sync + 'static>(
        self,
        route: axum::routing::MethodRouter<S>,
    ) -> axum::routing::MethodRouter<S> {
        route
            .layer::<_, std::convert::Infallible>(axum::middleware::from_fn_with_state(
                self, buffer,
            ))
            .layer(axum::extract::DefaultBodyLimit::disable())
    }

    fn too_large(&self) -> Response {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than {} bytes ({})",
                self.max_size, self.key
            ),
        )
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(limit, buffer)`): reads the body
/// under `limit` and hands the handler a request whose body is in memory.
pub async fn buffer(State(limit): State<BodyLimit>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.max_size as u64) {
        return limit.too_large();
    }
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, limit.max_size).collect();
    let bytes = match tokio::time::timeout(limit.timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return limit.too_large();
        }
        Ok(Err(e)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} (http_server.request_body_timeout)",
                    crate::config::duration::format(limit.timeout)
                ),
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
