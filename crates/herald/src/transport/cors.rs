//! CORS for the browser-facing transports: browsers on another origin may open HTTP
//! streams, SSE and emulation requests when `client.allowed_origins` allows their origin
//! (WebSockets need no CORS: their Origin is checked at the handshake).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};

use crate::node::Node;

/// Answers preflights and adds `Access-Control-Allow-*` headers for allowed origins.
/// The server API (`/api/`) is for backends and gets no CORS headers.
pub async fn middleware(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.is_some()
        && super::origin_allowed(req.headers(), &node.config.client.allowed_origins);
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut resp = if allowed {
            StatusCode::NO_CONTENT.into_response()
        } else {
            (StatusCode::FORBIDDEN, "origin not allowed").into_response()
        };
        if allowed {
            let requested = req
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned();
            let h = resp.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            if let Some(requested) = requested {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            allow(h, origin);
        }
        return resp;
    }
    let mut resp = next.run(req).await;
    if allowed {
        allow(resp.headers_mut(), origin);
    }
    resp
}

fn allow(h: &mut http::HeaderMap, origin: Option<HeaderValue>) {
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        // gRPC-Web clients read the status from these trailers-as-headers.
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("grpc-status, grpc-message"),
        );
    }
}
