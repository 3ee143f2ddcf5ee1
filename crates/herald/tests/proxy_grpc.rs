//! The proxy hooks over gRPC: Herald calls a real tonic server on loopback that
//! implements `centrifugal.centrifugo.proxy.CentrifugoProxy` (the service of
//! `proto/proxy.proto`, Centrifugo's shapes), for connect, subscribe, publish, rpc,
//! refresh and sub_refresh: allow, refuse with a code, disconnect, replaced data, RPC
//! result and error, a slow or absent backend (error 100 within the timeout), and HTTP
//! headers and gRPC metadata forwarded as call metadata.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::protocol::Encoding;
use herald::protocol::proto::{self, Command, ConnectRequest};
use herald::proxy::grpc::proto as pp;
use herald::proxy::grpc::proto::centrifugo_proxy_server::{CentrifugoProxy, CentrifugoProxyServer};
use serde_json::{Value, json};
use support::streams::{self, Event, Http};
use support::{Client, TestServer, cmd, now_secs};
use tonic::{Request, Response, Status};

/// What each call saw: the hook, the call's metadata (as headers) and a summary.
#[derive(Default)]
struct Backend {
    seen: Mutex<Vec<(String, http::HeaderMap, Value)>>,
}

impl Backend {
    fn saw<T>(&self, hook: &str, req: &Request<T>, what: Value) {
        self.seen
            .lock()
            .unwrap()
            .push((hook.into(), req.metadata().clone().into_headers(), what));
    }

    fn seen(&self, hook: &str) -> Vec<(http::HeaderMap, Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _, _)| h == hook)
            .map(|(_, m, v)| (m.clone(), v.clone()))
            .collect()
    }
}

fn error(code: u32, message: &str) -> Option<pp::Error> {
    Some(pp::Error {
        code,
        message: message.into(),
        temporary: false,
    })
}

struct Service(Arc<Backend>);

#[tonic::async_trait]
impl CentrifugoProxy for Service {
    async fn connect(
        &self,
        request: Request<pp::ConnectRequest>,
    ) -> Result<Response<pp::ConnectResponse>, Status> {
        let r = request.get_ref();
        let data: Value = serde_json::from_slice(&r.data).unwrap_or(Value::Null);
        self.0.saw(
            "connect",
            &request,
            json!({"transport": r.transport, "protocol": r.protocol, "data": data}),
        );
        let user = data["user"].as_str().unwrap_or_default().to_string();
        if user == "mallory" {
            return Ok(Response::new(pp::ConnectResponse {
                disconnect: Some(pp::Disconnect {
                    code: 4501,
                    reason: "unauthorized".into(),
                }),
                ..Default::default()
            }));
        }
        Ok(Response::new(pp::ConnectResponse {
            result: Some(pp::ConnectResult {
                user,
                channels: vec!["news".into()],
                data: br#"{"hello":"from grpc"}"#.to_vec().into(),
                expire_at: now_secs() + 1,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn refresh(
        &self,
        request: Request<pp::RefreshRequest>,
    ) -> Result<Response<pp::RefreshResponse>, Status> {
        self.0
            .saw("refresh", &request, json!({"user": request.get_ref().user}));
        Ok(Response::new(pp::RefreshResponse {
            result: Some(pp::RefreshResult {
                expire_at: now_secs() + 3600,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn subscribe(
        &self,
        request: Request<pp::SubscribeRequest>,
    ) -> Result<Response<pp::SubscribeResponse>, Status> {
        let channel = request.get_ref().channel.clone();
        self.0
            .saw("subscribe", &request, json!({"channel": channel}));
        if channel == "room:deny" {
            return Ok(Response::new(pp::SubscribeResponse {
                error: error(1403, "not a member"),
                ..Default::default()
            }));
        }
        Ok(Response::new(pp::SubscribeResponse {
            result: Some(pp::SubscribeResult {
                data: br#"{"room":"ok"}"#.to_vec().into(),
                expire_at: now_secs() + 1,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn publish(
        &self,
        request: Request<pp::PublishRequest>,
    ) -> Result<Response<pp::PublishResponse>, Status> {
        let r = request.get_ref();
        let data: Value = serde_json::from_slice(&r.data).unwrap_or(Value::Null);
        self.0
            .saw("publish", &request, json!({"user": r.user, "data": data}));
        Ok(Response::new(pp::PublishResponse {
            result: Some(pp::PublishResult {
                data: serde_json::to_vec(&json!({"stored": data})).unwrap().into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn rpc(
        &self,
        request: Request<pp::RpcRequest>,
    ) -> Result<Response<pp::RpcResponse>, Status> {
        let r = request.get_ref().clone();
        self.0.saw("rpc", &request, json!({"method": r.method}));
        match r.method.as_str() {
            "fail" => Ok(Response::new(pp::RpcResponse {
                error: error(1500, "it failed"),
                ..Default::default()
            })),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(Response::new(pp::RpcResponse::default()))
            }
            "broken" => Err(Status::internal("boom")),
            _ => Ok(Response::new(pp::RpcResponse {
                result: Some(pp::RpcResult {
                    data: r.data,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    async fn sub_refresh(
        &self,
        request: Request<pp::SubRefreshRequest>,
    ) -> Result<Response<pp::SubRefreshResponse>, Status> {
        self.0.saw(
            "sub_refresh",
            &request,
            json!({"channel": request.get_ref().channel}),
        );
        Ok(Response::new(pp::SubRefreshResponse {
            result: Some(pp::SubRefreshResult {
                expire_at: now_secs() + 3600,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

async fn backend() -> (Arc<Backend>, SocketAddr) {
    let b = Arc::new(Backend::default());
    let svc = CentrifugoProxyServer::new(Service(b.clone()));
    let app = axum::Router::new().route_service(
        "/centrifugal.centrifugo.proxy.CentrifugoProxy/{*method}",
        svc,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (b, addr)
}

async fn herald(addr: SocketAddr) -> TestServer {
    let p = |extra: Value| {
        let mut v = json!({"endpoint": format!("grpc://{addr}"), "timeout": "500ms",
            "http_headers": ["Cookie"], "grpc_metadata": ["x-tenant"],
            "grpc": {"static_metadata": {"x-static": "s1"}}});
        support::merge(&mut v, extra);
        v
    };
    TestServer::start(json!({
        "client": {"proxy": {
            "connect": p(json!({"enabled": true})),
            "refresh": p(json!({"enabled": true}))
        }},
        "channel": {
            "proxy": {"subscribe": p(json!({})), "publish": p(json!({})),
                      "sub_refresh": p(json!({}))},
            "namespaces": [{"name": "room", "subscribe_proxy_enabled": true,
                "publish_proxy_enabled": true, "sub_refresh_proxy_enabled": true}]
        },
        "rpc": {"proxy": p(json!({})), "without_namespace": {"proxy_enabled": true}}
    }))
    .await
}

/// A WebSocket connect without a token, as `user`, with a cookie.
async fn connect_as(server: &TestServer, user: &str) -> (Client, proto::Reply) {
    let mut c =
        Client::open_at_with_headers(server.addr, Encoding::Json, None, &[("cookie", "sid=7")])
            .await;
    let reply = c
        .call(Command {
            connect: Some(ConnectRequest {
                data: serde_json::to_vec(&json!({"user": user})).unwrap().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    (c, reply)
}

fn rpc(method: &str) -> Command {
    Command {
        rpc: Some(proto::RpcRequest {
            method: method.into(),
            data: support::json_bytes(&json!({"q": method})),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_hook_over_grpc_from_a_websocket_client() {
    let (b, addr) = backend().await;
    let server = herald(addr).await;

    // Connect: the backend names the user, its channel and the reply data.
    let (mut c, reply) = connect_as(&server, "alice").await;
    let result = reply.connect.unwrap_or_else(|| panic!("connected"));
    assert_eq!(
        support::payload_json(&result.data),
        json!({"hello": "from grpc"})
    );
    assert!(result.subs.contains_key("news"));
    assert!(!result.expires, "the refresh proxy prolongs it");
    let (metadata, seen) = b.seen("connect").remove(0);
    assert_eq!(seen["transport"], "websocket");
    assert_eq!(seen["protocol"], "json");
    assert_eq!(metadata["cookie"], "sid=7", "HTTP headers become metadata");
    assert_eq!(metadata["x-static"], "s1");

    // Subscribe: allowed with data, refused with the backend's code.
    let reply = c.call_ok(cmd::subscribe("room:1")).await;
    assert_eq!(
        support::payload_json(&reply.subscribe.unwrap().data),
        json!({"room": "ok"})
    );
    assert_eq!(c.call_err(cmd::subscribe("room:deny")).await, 1403);

    // Publish: the backend's data is what subscribers get.
    c.call_ok(cmd::publish("room:1", &json!({"text": "hi"})))
        .await;
    let p = c.expect_pub("room:1").await;
    assert_eq!(
        support::payload_json(&p.data),
        json!({"stored": {"text": "hi"}})
    );
    assert_eq!(b.seen("publish")[0].1["user"], "alice");

    // RPC: result, the backend's error, a gRPC failure and a slow backend (100).
    let reply = c.call_ok(rpc("echo")).await;
    assert_eq!(
        support::payload_json(&reply.rpc.unwrap().data),
        json!({"q": "echo"})
    );
    assert_eq!(c.call_err(rpc("fail")).await, 1500);
    assert_eq!(c.call_err(rpc("broken")).await, 100);
    let started = Instant::now();
    assert_eq!(c.call_err(rpc("slow")).await, 100);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the timeout"
    );

    // Refresh and sub_refresh: asked at expiry, the connection and subscription live on.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    server.api.publish("room:1", json!({"n": 2})).await;
    assert_eq!(
        support::payload_json(&c.expect_pub("room:1").await.data),
        json!({"n": 2})
    );
    assert_eq!(b.seen("refresh")[0].1["user"], "alice");
    assert_eq!(b.seen("sub_refresh")[0].1["channel"], "room:1");

    // Disconnect from the connect hook.
    let mut m = Client::open_at(server.addr, Encoding::Json, None).await;
    m.send(Command {
        id: 1,
        connect: Some(ConnectRequest {
            data: support::json_bytes(&json!({"user": "mallory"})),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(m.expect_close_code(4501).await, "unauthorized");
}

#[tokio::test]
async fn grpc_clients_forward_their_metadata_and_an_absent_backend_is_error_100() {
    let (b, addr) = backend().await;
    let server = herald(addr).await;
    // A uni_grpc client with metadata: `grpc_metadata` names what goes to the backend.
    let http = Http::h2c(server.addr);
    let mut client = herald::transport::grpc::client::unistream::centrifugo_uni_stream_client::CentrifugoUniStreamClient::new(
        streams::grpc_channel(&http).await,
    );
    let mut request = tonic::Request::new(proto::ConnectRequest {
        data: support::json_bytes(&json!({"user": "uni"})),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-other", "no".parse().unwrap());
    let mut stream = client.consume(request).await.unwrap().into_inner();
    use futures_util::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("connect push in time")
        .expect("a message")
        .expect("not an error");
    assert!(first.connect.is_some(), "{first:?}");
    let (metadata, seen) = b.seen("connect").remove(0);
    assert_eq!(seen["transport"], "uni_grpc");
    assert_eq!(metadata["x-tenant"], "acme");
    assert!(metadata.get("x-other").is_none());

    // Nothing listening: the client gets 100 within the timeout.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = herald(down).await;
    let started = Instant::now();
    let (_c, reply) = connect_as(&server, "alice").await;
    let e = reply.error.unwrap_or_else(|| panic!("an error"));
    assert_eq!((e.code, e.temporary), (100, true));
    assert!(started.elapsed() < Duration::from_secs(2));
    // An emulation client (SSE) gets the same.
    let mut sse = streams::sse_raw(&Http::h1(server.addr), r#"{"id":1,"connect":{}}"#)
        .await
        .expect("SSE stream");
    match sse.expect("connect reply", Duration::from_secs(3)).await {
        Event::Reply { error, .. } => assert_eq!(error.map(|e| e.0), Some(100)),
        other => panic!("an error reply, got {other:?}"),
    }
}
