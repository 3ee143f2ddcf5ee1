//! The web pages Herald serves itself, both off by default:
//! - the **chat demo** at `/` when `demo.enabled` (`herald serve --demo`), with its assets under
//!   `/demo/`, `POST /demo/token` (a connection token for any nickname: demo mode only) and
//!   `GET /demo/rooms` (the `chat:` channels that have subscribers);
//! - the **web console** at `/console` when `admin.enabled`, with its data endpoints under
//!   `/console/api/`. Login (`POST /console/api/login`) takes `admin.password` or the
//!   `http_api.key` and returns a session token (HS256, signed with a key derived from
//!   `admin.secret`, 12 hours); every other console endpoint wants it as
//!   `Authorization: Bearer <token>`, unless `admin.insecure`. The console runs the node's
//!   operations itself, so the API key never reaches the browser.
//!
//! The pages are built from `web/` by esbuild (`npm run build --prefix web`, which bundles the
//! centrifuge SDK locked in `web/package-lock.json`) into `web/dist/`, committed, and embedded
//! here with `include_bytes!`: serving them needs no Node and no files at run time, and every
//! asset comes from Herald (no CDN, no external fonts).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{self, Executor};
use crate::config::{ChannelOptions, Config, Namespace};
use crate::engine::ClientInfo;
use crate::error::{ClientError, Disconnect};
use crate::node::Node;

/// The namespace the demo's rooms live in (`chat:<room>`).
pub const DEMO_NAMESPACE: &str = "chat";
/// Lifetime of a demo connection token; the page fetches a new one when it runs out.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest demo nickname, in characters.
const MAX_NICK_CHARS: usize = 32;
/// Lifetime of a console session.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Audience of console session tokens, so that no other token passes for one.
const SESSION_AUDIENCE: &str = "herald-console";
/// Pause before answering a wrong console password, to slow guessing.
const LOGIN_FAILURE_DELAY: Duration = Duration::from_millis(300);
/// Most rows the console's channel and connection lists return.
const MAX_LIST_ROWS: usize = 500;
/// Most publications the console's history view asks for.
const MAX_HISTORY_ROWS: usize = 100;

/// The transports the demo's picker offers; a token names the one its page uses.
const DEMO_TRANSPORTS: &[&str] = &["websocket", "http_stream", "sse"];

/// The `chat` namespace that demo mode adds when the config has none: rooms with history
/// (100 messages, 24 h) and forced recovery, presence, join/leave, and subscribe, publish,
/// history and presence for every connected client.
pub fn demo_namespace() -> Namespace {
    Namespace {
        name: DEMO_NAMESPACE.to_owned(),
        options: ChannelOptions {
            presence: true,
            join_leave: true,
            history_size: 100,
            history_ttl: Duration::from_secs(24 * 3600),
            force_recovery: true,
            allow_subscribe_for_client: true,
            allow_publish_for_subscriber: true,
            allow_history_for_subscriber: true,
            allow_presence_for_subscriber: true,
            ..ChannelOptions::default()
        },
    }
}

/// Adds [`demo_namespace`] to `config` when it has no `chat` namespace; whether it did.
pub fn add_demo_namespace(config: &mut Config) -> bool {
    if config
        .channel
        .namespaces
        .iter()
        .any(|n| n.name == DEMO_NAMESPACE)
    {
        return false;
    }
    config.channel.namespaces.push(demo_namespace());
    true
}

// ---------------------------------------------------------------------------
// Embedded assets
// ---------------------------------------------------------------------------

/// One embedded file of `web/dist`.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: OnceLock<String>,
}

macro_rules! dist {
    ($path:literal, $type:expr) => {
        Asset {
            body: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../web/dist/",
                $path
            )),
            content_type: $type,
            etag: OnceLock::new(),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static DEMO_HTML: Asset = dist!("demo/index.html", HTML);
static DEMO_JS: Asset = dist!("demo/app.js", JS);
static DEMO_CSS: Asset = dist!("demo/style.css", CSS);
static CONSOLE_HTML: Asset = dist!("console/index.html", HTML);
static CONSOLE_JS: Asset = dist!("console/app.js", JS);
static CONSOLE_CSS: Asset = dist!("console/style.css", CSS);

/// Pages load scripts, styles and data from Herald only; `connect-src 'self'` covers the
/// same-origin WebSocket, HTTP-streaming, SSE and emulation requests.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Serves an asset with an ETag (304 when the browser has it) and, for pages, the security
/// headers.
fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let etag = asset
        .etag
        .get_or_init(|| format!("\"{:016x}\"", fnv1a(asset.body)));
    let mut resp = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    resp
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Web {
    node: Arc<Node>,
    /// HS256 key of console sessions.
    session_key: Arc<Vec<u8>>,
}

impl Web {
    /// The server-API executor: the console's data actions are server-API methods.
    fn executor(&self) -> Executor {
        Executor::new(self.node.clone())
    }
}

/// The demo's and the console's routes, as configured (an empty router when both are off).
pub fn router(node: Arc<Node>) -> Router {
    let cfg = node.config.clone();
    // Bodies are small JSON objects; the API's limit and the one body deadline apply.
    let body = crate::request_body::BodyLimit {
        max_size: cfg.http_api.max_request_body_size,
        key: "http_api.max_request_body_size",
        timeout: cfg.http_server.request_body_timeout,
    };
    let mut r: Router<Web> = Router::new();
    if cfg.demo.enabled {
        r = r
            .route(
                "/",
                get(|h: HeaderMap| async move { serve(&DEMO_HTML, &h) }),
            )
            .route(
                "/demo/app.js",
                get(|h: HeaderMap| async move { serve(&DEMO_JS, &h) }),
            )
            .route(
                "/demo/style.css",
                get(|h: HeaderMap| async move { serve(&DEMO_CSS, &h) }),
            )
            .route("/demo/token", body.apply(post(demo_token)))
            .route("/demo/rooms", get(demo_rooms));
    }
    let secret = if cfg.admin.secret.is_empty() {
        crate::auth::generate_secret()
    } else {
        cfg.admin.secret.clone()
    };
    // Derived, so that a secret shared with the token keys still makes distinct keys.
    let session_key = Arc::new(format!("herald-console-session:{secret}").into_bytes());
    let web = Web { node, session_key };
    if cfg.admin.enabled {
        let page = || get(|h: HeaderMap| async move { serve(&CONSOLE_HTML, &h) });
        // The session is checked from the headers before any of the body is read.
        let data = Router::new()
            .route("/console/api/info", get(info))
            .route("/console/api/channels", get(channels))
            .route("/console/api/connections", get(connections))
            .route("/console/api/presence", body.apply(post(presence)))
            .route("/console/api/history", body.apply(post(history)))
            .route("/console/api/publish", body.apply(post(publish)))
            .route("/console/api/disconnect", body.apply(post(disconnect)))
            .route_layer(axum::middleware::from_fn_with_state(
                web.clone(),
                require_session,
            ));
        r = r
            .route("/console", page())
            .route("/console/", page())
            .route(
                "/console/app.js",
                get(|h: HeaderMap| async move { serve(&CONSOLE_JS, &h) }),
            )
            .route(
                "/console/style.css",
                get(|h: HeaderMap| async move { serve(&CONSOLE_CSS, &h) }),
            )
            .route("/console/api/login", body.apply(post(login)))
            .route("/console/api/session", get(session))
            .merge(data);
    }
    r.with_state(web)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The request body as `T` (nested at most `http_api.max_json_depth` levels); the error
/// says what is wrong.
fn parse<T: DeserializeOwned>(node: &Node, body: &[u8]) -> Result<T, String> {
    crate::protocol::json::from_slice(body, node.config.http_api.max_json_depth)
        .map_err(|e| format!("bad request body: {e}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A server-API method's failure as a console error (400, with a message for people).
fn api_error(e: ClientError) -> Response {
    let message = match e.code {
        c if c == ClientError::UNKNOWN_CHANNEL.code => {
            "unknown channel: its namespace is not configured".to_owned()
        }
        c if c == ClientError::NOT_AVAILABLE.code => {
            "not available: off in this channel's namespace".to_owned()
        }
        _ => e.message.into_owned(),
    };
    error(StatusCode::BAD_REQUEST, message)
}

// ---------------------------------------------------------------------------
// Demo
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct DemoTokenRequest {
    user: String,
    #[serde(default)]
    transport: String,
}

#[derive(Serialize)]
struct DemoClaims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
    info: Value,
}

/// `POST /demo/token {"user": NICK, "transport": T}`: a connection token for NICK whose
/// connection info names the transport (shown in presence).
async fn demo_token(State(web): State<Web>, body: Bytes) -> Response {
    let req: DemoTokenRequest = match parse(&web.node, &body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let user = req.user.trim();
    if user.is_empty()
        || user.chars().count() > MAX_NICK_CHARS
        || user.chars().any(char::is_control)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("user: 1 to {MAX_NICK_CHARS} characters, no control characters"),
        );
    }
    let secret = &web.node.config.client.token.hmac_secret_key;
    if secret.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "demo tokens need client.token.hmac_secret_key",
        );
    }
    let mut info = json!({ "name": user });
    if DEMO_TRANSPORTS.contains(&req.transport.as_str()) {
        info["transport"] = json!(req.transport);
    }
    let now = unix_now();
    let claims = DemoClaims {
        sub: user,
        iat: now,
        exp: now.saturating_add(DEMO_TOKEN_TTL.as_secs() as i64),
        info,
    };
    match jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    ) {
        Ok(token) => axum::Json(json!({ "token": token, "user": user })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /demo/rooms`: the demo rooms that have subscribers on any node, with their
/// subscriber counts.
async fn demo_rooms(State(web): State<Web>) -> Response {
    let prefix = format!(
        "{DEMO_NAMESPACE}{}",
        web.node.config.channel.namespace_boundary
    );
    let channels = match web.node.channels(&format!("{prefix}*")).await {
        Ok(c) => c,
        Err(e) => return api_error(e.into()),
    };
    let mut rooms: Vec<Value> = channels
        .into_iter()
        .filter_map(|(ch, n)| {
            ch.strip_prefix(&prefix)
                .map(|room| json!({ "room": room, "clients": n }))
        })
        .collect();
    rooms.sort_by(|a, b| a["room"].as_str().cmp(&b["room"].as_str()));
    rooms.truncate(MAX_LIST_ROWS);
    axum::Json(json!({ "rooms": rooms })).into_response()
}

// ---------------------------------------------------------------------------
// Console: sessions
// ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct SessionClaims {
    sub: String,
    aud: String,
    iat: i64,
    exp: i64,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn make_session(key: &[u8]) -> String {
    let now = unix_now();
    let claims = SessionClaims {
        sub: "admin".to_owned(),
        aud: SESSION_AUDIENCE.to_owned(),
        iat: now,
        exp: now.saturating_add(SESSION_TTL.as_secs() as i64),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key),
    )
    .expect("HS256 signing with an in-memory key does not fail")
}

fn session_valid(key: &[u8], token: &str) -> bool {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[SESSION_AUDIENCE]);
    validation.leeway = 0;
    jsonwebtoken::decode::<SessionClaims>(token, &DecodingKey::from_secret(key), &validation)
        .is_ok()
}

fn authenticated(web: &Web, headers: &HeaderMap) -> bool {
    if web.node.config.admin.insecure {
        return true;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| session_valid(&web.session_key, t.trim()))
}

/// Middleware: 401 unless the request carries a valid console session.
async fn require_session(
    State(web): State<Web>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !authenticated(&web, req.headers()) {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    }
    next.run(req).await
}

#[derive(Deserialize)]
struct LoginRequest {
    password: String,
}

/// `POST /console/api/login {"password": P}`: a session token when P is `admin.password` or
/// the `http_api.key`.
async fn login(State(web): State<Web>, body: Bytes) -> Response {
    let req: LoginRequest = match parse(&web.node, &body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let cfg = &web.node.config;
    let given = req.password.as_bytes();
    let ok = [&cfg.admin.password, &cfg.http_api.key]
        .iter()
        .any(|secret| !secret.is_empty() && constant_time_eq(given, secret.as_bytes()));
    if !ok {
        tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
        return error(StatusCode::UNAUTHORIZED, "wrong password");
    }
    axum::Json(json!({
        "token": make_session(&web.session_key),
        "expires_in": SESSION_TTL.as_secs(),
    }))
    .into_response()
}

/// `GET /console/api/session`: whether the request is logged in; 200 either way.
async fn session(State(web): State<Web>, headers: HeaderMap) -> Response {
    axum::Json(json!({
        "authenticated": authenticated(&web, &headers),
        "insecure": web.node.config.admin.insecure,
    }))
    .into_response()
}

// ---------------------------------------------------------------------------
// Console: data
// ---------------------------------------------------------------------------

/// Sums of the Prometheus samples by metric name, and the per-transport values of
/// `herald_connections`, read from the node's own exposition.
fn metric_sums(text: &str) -> (HashMap<String, f64>, HashMap<String, f64>) {
    let mut sums: HashMap<String, f64> = HashMap::new();
    let mut connections = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        *sums.entry(name.to_owned()).or_default() += value;
        if name == "herald_connections"
            && let Some(t) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("transport=\""))
                .and_then(|t| t.split('"').next())
        {
            *connections.entry(t.to_owned()).or_default() += value;
        }
    }
    (sums, connections)
}

/// `GET /console/api/info`: the node's counts, its message counters (the console turns them
/// into rates) and its connections by transport.
async fn info(State(web): State<Web>) -> Response {
    let (sums, connections) = metric_sums(&web.node.metrics.render());
    let counter = |name: &str| sums.get(name).copied().unwrap_or(0.0) as u64;
    axum::Json(json!({
        "node": web.node.info(),
        "counters": {
            "publications": counter("herald_publications_total"),
            "deliveries": counter("herald_deliveries_total"),
            "messages_sent": counter("herald_messages_sent_total"),
            "messages_received": counter("herald_messages_received_total"),
        },
        "connections": connections,
    }))
    .into_response()
}

/// `GET /console/api/channels`: channels with subscribers on any node (subscribers summed
/// over the nodes), most subscribed first.
async fn channels(State(web): State<Web>) -> Response {
    let mut list: Vec<(String, u32)> = match web.node.channels("").await {
        Ok(c) => c.into_iter().collect(),
        Err(e) => return api_error(e.into()),
    };
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total = list.len();
    list.truncate(MAX_LIST_ROWS);
    let rows: Vec<Value> = list
        .into_iter()
        .map(|(channel, n)| json!({ "channel": channel, "clients": n }))
        .collect();
    axum::Json(json!({ "channels": rows, "total": total })).into_response()
}

/// `GET /console/api/connections`: the connections of every node (client id and user).
async fn connections(State(web): State<Web>) -> Response {
    let mut list = match web.node.connections().await {
        Ok(c) => c,
        Err(e) => return api_error(e.into()),
    };
    list.sort();
    let total = list.len();
    list.truncate(MAX_LIST_ROWS);
    let rows: Vec<Value> = list
        .into_iter()
        .map(|(user, client)| json!({ "user": user, "client": client }))
        .collect();
    axum::Json(json!({ "connections": rows, "total": total })).into_response()
}

fn raw_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(bytes)))
}

fn client_json(i: &ClientInfo) -> Value {
    json!({ "client": i.client, "user": i.user, "conn_info": raw_json(&i.conn_info) })
}

#[derive(Deserialize)]
struct ChannelRequest {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /console/api/presence {"channel": C}`: who is in C.
async fn presence(State(web): State<Web>, body: Bytes) -> Response {
    let req: ChannelRequest = match parse(&web.node, &body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let request = api::ChannelRequest {
        channel: req.channel,
    };
    match web.executor().presence(request).await {
        Ok(p) => {
            let mut clients: Vec<&ClientInfo> = p.presence.values().collect();
            clients.sort_by(|a, b| (&a.user, &a.client).cmp(&(&b.user, &b.client)));
            let rows: Vec<Value> = clients.into_iter().map(client_json).collect();
            axum::Json(json!({ "clients": rows })).into_response()
        }
        Err(e) => api_error(e),
    }
}

/// `POST /console/api/history {"channel": C, "limit": N}`: C's last N publications, newest first.
async fn history(State(web): State<Web>, body: Bytes) -> Response {
    let req: ChannelRequest = match parse(&web.node, &body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let limit = req.limit.unwrap_or(20).clamp(1, MAX_HISTORY_ROWS);
    let request = api::HistoryRequest {
        channel: req.channel,
        limit: Some(i64::try_from(limit).unwrap_or(i64::MAX)),
        since: None,
        reverse: true,
    };
    match web.executor().history(request).await {
        Ok(h) => {
            let pubs: Vec<Value> = h
                .publications
                .iter()
                .map(|p| {
                    json!({
                        "offset": p.offset,
                        "time": p.time,
                        "data": raw_json(&p.data),
                        "info": p.info.as_ref().map(client_json),
                    })
                })
                .collect();
            axum::Json(json!({
                "publications": pubs,
                "offset": h.offset,
                "epoch": h.epoch,
            }))
            .into_response()
        }
        Err(e) => api_error(e),
    }
}

#[derive(Deserialize)]
struct PublishRequest {
    channel: String,
    data: Value,
}

/// `POST /console/api/publish {"channel": C, "data": JSON}`: publishes as the server API does.
async fn publish(State(web): State<Web>, body: Bytes) -> Response {
    let req: PublishRequest = match parse(&web.node, &body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let request = api::PublishRequest {
        channel: req.channel,
        data: Some(Bytes::from(req.data.to_string())),
        ..Default::default()
    };
    match web.executor().publish(request).await {
        Ok(pos) => axum::Json(json!({ "offset": pos.offset, "epoch": pos.epoch })).into_response(),
        Err(e) => api_error(e),
    }
}

#[derive(Deserialize)]
struct DisconnectRequest {
    user: String,
    #[serde(default)]
    reconnect: bool,
}

/// `POST /console/api/disconnect {"user": U, "reconnect": B}`: closes every connection of U
/// (on every node), with "force reconnect" (3011) or "force disconnect" (3503, the
/// default); answers how many of them were on this node.
async fn disconnect(State(web): State<Web>, body: Bytes) -> Response {
    let req: DisconnectRequest = match parse(&web.node, &body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if req.user.is_empty() {
        return error(StatusCode::BAD_REQUEST, "user required");
    }
    let n = web.node.user_connections(&req.user);
    let d = if req.reconnect {
        Disconnect::FORCE_RECONNECT
    } else {
        Disconnect::FORCE_NO_RECONNECT
    };
    let request = api::DisconnectRequest {
        user: req.user,
        disconnect: Some(api::DisconnectSpec {
            code: d.code,
            reason: d.reason.into_owned(),
        }),
        ..Default::default()
    };
    match web.executor().disconnect(request).await {
        Ok(_) => axum::Json(json!({ "disconnected": n })).into_response(),
        Err(e) => api_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    fn node(f: impl FnOnce(&mut Config)) -> Arc<Node> {
        let mut cfg = Config::default();
        cfg.client.token.hmac_secret_key = "web-test-secret".to_owned();
        f(&mut cfg);
        cfg.validate().unwrap();
        Node::new(cfg).unwrap()
    }

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, bytes)
    }

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[tokio::test]
    async fn everything_is_off_by_default() {
        let app = router(node(|_| {}));
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/demo/app.js"),
            ("POST", "/demo/token"),
            ("GET", "/demo/rooms"),
            ("GET", "/console"),
            ("POST", "/console/api/login"),
            ("GET", "/console/api/info"),
        ] {
            let (status, _, _) = call(&app, method, path, None, r#"{"user":"a"}"#).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn demo_serves_the_page_and_tokens_that_the_node_accepts() {
        let n = node(|c| {
            c.demo.enabled = true;
            add_demo_namespace(c);
        });
        let app = router(n.clone());
        let (status, headers, body) = call(&app, "GET", "/", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], HTML);
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert!(String::from_utf8_lossy(&body).contains("/demo/app.js"));
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let resp = app
            .clone()
            .oneshot(
                Request::get("/")
                    .header(header::IF_NONE_MATCH, &etag)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        let (status, headers, body) = call(&app, "GET", "/demo/app.js", None, "").await;
        assert_eq!(
            (status, headers[header::CONTENT_TYPE].to_str().unwrap()),
            (StatusCode::OK, JS)
        );
        assert!(body.len() > 10_000, "the bundle holds the SDK");
        let (status, headers, _) = call(&app, "GET", "/demo/style.css", None, "").await;
        assert_eq!(
            (status, headers[header::CONTENT_TYPE].to_str().unwrap()),
            (StatusCode::OK, CSS)
        );

        let (status, _, body) = call(
            &app,
            "POST",
            "/demo/token",
            None,
            r#"{"user": " alice ", "transport": "sse"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let token = json_of(&body)["token"].as_str().unwrap().to_owned();
        let claims = n.verifier.verify_connect(&token).await.unwrap();
        assert_eq!(claims.user, "alice");
        let info: Value = serde_json::from_slice(claims.info.as_deref().unwrap()).unwrap();
        assert_eq!(info, json!({"name": "alice", "transport": "sse"}));

        for bad in [
            r#"{"user": ""}"#,
            r#"{"user": "   "}"#,
            r#"{"user": "a\u0007b"}"#,
            r#"{"nick": "x"}"#,
            "nope",
        ] {
            let (status, _, body) = call(&app, "POST", "/demo/token", None, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(json_of(&body)["error"].is_string());
        }
        let long = format!(r#"{{"user": "{}"}}"#, "x".repeat(MAX_NICK_CHARS + 1));
        assert_eq!(
            call(&app, "POST", "/demo/token", None, &long).await.0,
            StatusCode::BAD_REQUEST
        );

        let (status, _, body) = call(&app, "GET", "/demo/rooms", None, "").await;
        assert_eq!(
            (status, json_of(&body)),
            (StatusCode::OK, json!({"rooms": []}))
        );
        // The console stays off.
        assert_eq!(
            call(&app, "GET", "/console", None, "").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn demo_namespace_is_added_only_when_missing() {
        let mut cfg = Config::default();
        assert!(add_demo_namespace(&mut cfg));
        assert!(!add_demo_namespace(&mut cfg));
        cfg.validate().unwrap();
        let o = cfg.channel_options("chat:lobby").unwrap();
        assert!(
            o.presence && o.join_leave && o.recovery_possible() && o.allow_publish_for_subscriber
        );
    }

    #[tokio::test]
    async fn console_needs_a_session() {
        let n = node(|c| {
            c.admin.enabled = true;
            c.admin.password = "pw".to_owned();
            c.http_api.key = "api-key".to_owned();
            c.channel.namespaces.push(demo_namespace());
        });
        let app = router(n.clone());
        let (status, headers, _) = call(&app, "GET", "/console", None, "").await;
        assert_eq!(
            (status, headers[header::CONTENT_TYPE].to_str().unwrap()),
            (StatusCode::OK, HTML)
        );
        assert_eq!(
            call(&app, "GET", "/console/app.js", None, "").await.0,
            StatusCode::OK
        );
        // No demo.
        assert_eq!(
            call(&app, "GET", "/", None, "").await.0,
            StatusCode::NOT_FOUND
        );

        for path in [
            "/console/api/info",
            "/console/api/channels",
            "/console/api/connections",
        ] {
            assert_eq!(
                call(&app, "GET", path, None, "").await.0,
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
            assert_eq!(
                call(&app, "GET", path, Some("forged.token.here"), "")
                    .await
                    .0,
                StatusCode::UNAUTHORIZED
            );
        }
        let publish = r#"{"channel": "chat:x", "data": {"text": "hi"}}"#;
        assert_eq!(
            call(&app, "POST", "/console/api/publish", None, publish)
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        let (_, _, body) = call(&app, "GET", "/console/api/session", None, "").await;
        assert_eq!(json_of(&body)["authenticated"], false);

        let (status, _, _) = call(
            &app,
            "POST",
            "/console/api/login",
            None,
            r#"{"password": "wrong"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // A session made with another key does not pass.
        let other = make_session(b"another key");
        assert_eq!(
            call(&app, "GET", "/console/api/info", Some(&other), "")
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );

        for password in ["pw", "api-key"] {
            let (status, _, body) = call(
                &app,
                "POST",
                "/console/api/login",
                None,
                &format!(r#"{{"password": "{password}"}}"#),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let token = json_of(&body)["token"].as_str().unwrap().to_owned();
            let (_, _, body) = call(&app, "GET", "/console/api/session", Some(&token), "").await;
            assert_eq!(json_of(&body)["authenticated"], true);
            let (status, _, body) = call(&app, "GET", "/console/api/info", Some(&token), "").await;
            assert_eq!(status, StatusCode::OK);
            let j = json_of(&body);
            assert_eq!(j["node"]["num_clients"], 0);
            assert!(j["counters"]["publications"].is_u64());
        }
        let (_, _, body) = call(
            &app,
            "POST",
            "/console/api/login",
            None,
            r#"{"password": "pw"}"#,
        )
        .await;
        let token = json_of(&body)["token"].as_str().unwrap().to_owned();
        let t = Some(token.as_str());

        let (status, _, body) = call(&app, "POST", "/console/api/publish", t, publish).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(json_of(&body)["offset"], 1);
        let (status, _, body) = call(
            &app,
            "POST",
            "/console/api/history",
            t,
            r#"{"channel": "chat:x"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json_of(&body)["publications"][0]["data"],
            json!({"text": "hi"})
        );
        let (status, _, body) = call(
            &app,
            "POST",
            "/console/api/presence",
            t,
            r#"{"channel": "chat:x"}"#,
        )
        .await;
        assert_eq!(
            (status, json_of(&body)),
            (StatusCode::OK, json!({"clients": []}))
        );
        let (status, _, body) = call(
            &app,
            "POST",
            "/console/api/history",
            t,
            r#"{"channel": "nope:x"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            json_of(&body)["error"]
                .as_str()
                .unwrap()
                .starts_with("unknown channel")
        );
        let (status, _, body) = call(
            &app,
            "POST",
            "/console/api/disconnect",
            t,
            r#"{"user": "bob"}"#,
        )
        .await;
        assert_eq!(
            (status, json_of(&body)),
            (StatusCode::OK, json!({"disconnected": 0}))
        );
        let (status, _, body) = call(&app, "GET", "/console/api/channels", t, "").await;
        assert_eq!(
            (status, json_of(&body)["total"].clone()),
            (StatusCode::OK, json!(0))
        );
    }

    #[tokio::test]
    async fn insecure_console_needs_no_login() {
        let app = router(node(|c| {
            c.admin.enabled = true;
            c.admin.insecure = true;
        }));
        assert_eq!(
            call(&app, "GET", "/console/api/info", None, "").await.0,
            StatusCode::OK
        );
        let (_, _, body) = call(&app, "GET", "/console/api/session", None, "").await;
        assert_eq!(json_of(&body)["authenticated"], true);
        // No password configured: no password logs in.
        assert_eq!(
            call(
                &app,
                "POST",
                "/console/api/login",
                None,
                r#"{"password": ""}"#
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn metric_sums_read_the_exposition() {
        let text = "# HELP x\nherald_connections{transport=\"websocket\"} 2\nherald_connections{transport=\"sse\"} 1\n\
                    herald_messages_sent_total{transport=\"websocket\"} 10\nherald_messages_sent_total{transport=\"sse\"} 5\n\
                    herald_publications_total 7\n# EOF\n";
        let (sums, conns) = metric_sums(text);
        assert_eq!(sums["herald_messages_sent_total"], 15.0);
        assert_eq!(sums["herald_publications_total"], 7.0);
        assert_eq!(sums["herald_connections"], 3.0);
        assert_eq!(conns["websocket"], 2.0);
        assert_eq!(conns["sse"], 1.0);
    }
}
