//! Unidirectional gRPC (`centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume`)
//! with a tonic client generated from `proto/unistream.proto`, and gRPC-Web over HTTP/1.1
//! with hand-made `application/grpc-web+proto` frames, as a browser sends them: a unary
//! server API call and a Consume stream.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald::grpc_api::proto as api;
use herald::grpc_api::proto::centrifugo_api_client::CentrifugoApiClient;
use herald::protocol::proto::{self, Push};
use herald::transport::grpc::client::unistream::centrifugo_uni_stream_client::CentrifugoUniStreamClient;
use prost::Message;
use serde_json::json;
use support::{API_KEY, TestServer, WAIT, json_bytes, payload_json};
use tonic::transport::Channel;

fn config() -> serde_json::Value {
    json!({
        "uni_grpc": {"enabled": true},
        "grpc_api": {"enabled": true},
        "channel": {
            "namespaces": [{
                "name": "chat", "history_size": 100, "history_ttl": "300s",
                "force_recovery": true, "allow_subscribe_for_client": true
            }]
        }
    })
}

async fn channel(server: &TestServer) -> Channel {
    tokio::time::timeout(
        WAIT,
        Channel::from_shared(format!("http://{}", server.addr))
            .expect("uri")
            .connect(),
    )
    .await
    .expect("gRPC connect timed out")
    .expect("gRPC connect")
}

fn connect_request(token: &str, channels: &[&str]) -> proto::ConnectRequest {
    proto::ConnectRequest {
        token: token.to_string(),
        name: "grpc-tests".into(),
        subs: channels
            .iter()
            .map(|c| (c.to_string(), proto::SubscribeRequest::default()))
            .collect(),
        ..Default::default()
    }
}

/// A Consume stream that skips pings.
struct Consumer(tonic::Streaming<Push>);

impl Consumer {
    async fn open(server: &TestServer, req: proto::ConnectRequest) -> Consumer {
        let mut client = CentrifugoUniStreamClient::new(channel(server).await);
        let stream = tokio::time::timeout(WAIT, client.consume(req))
            .await
            .expect("Consume timed out")
            .expect("Consume failed")
            .into_inner();
        Consumer(stream)
    }

    /// The next non-ping push; `None` when the stream ended with status OK.
    async fn next(&mut self) -> Option<Push> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.0.message())
                .await
                .unwrap_or_else(|_| panic!("no push within {WAIT:?}"))
                .unwrap_or_else(|s| panic!("stream failed: {s:?}"));
            match msg {
                Some(p) if p == Push::default() => continue,
                other => return other,
            }
        }
    }

    async fn expect(&mut self, what: &str) -> Push {
        self.next()
            .await
            .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
    }
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("apikey {API_KEY}").parse().expect("metadata"),
    );
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_receives_publications_from_http_and_grpc_api() {
    let server = TestServer::start(config()).await;
    let mut c = Consumer::open(
        &server,
        connect_request(&server.token("alice"), &["chat:a"]),
    )
    .await;
    let connect = c.expect("connect push").await;
    let connect = connect.connect.expect("first push is the connect push");
    assert!(!connect.client.is_empty());
    assert!(connect.subs.contains_key("chat:a"), "{connect:?}");

    server.api.publish("chat:a", json!({"via": "http"})).await;
    let p = c.expect("publication from the HTTP API").await;
    assert_eq!(p.channel, "chat:a");
    let publication = p.r#pub.expect("publication push");
    assert_eq!(payload_json(&publication.data), json!({"via": "http"}));
    assert_eq!(publication.offset, 1);

    let mut api = CentrifugoApiClient::new(channel(&server).await);
    let resp = api
        .publish(authed(api::PublishRequest {
            channel: "chat:a".into(),
            data: json_bytes(&json!({"via": "grpc"})),
            ..Default::default()
        }))
        .await
        .expect("gRPC publish")
        .into_inner();
    assert!(resp.error.is_none(), "{resp:?}");
    assert_eq!(resp.result.expect("result").offset, 2);
    let p = c.expect("publication from the gRPC API").await;
    let publication = p.r#pub.expect("publication push");
    assert_eq!(payload_json(&publication.data), json!({"via": "grpc"}));
    assert_eq!(publication.offset, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_recovers_from_the_connect_request_position() {
    let server = TestServer::start(config()).await;
    let first = server.api.publish("chat:r", json!({"n": 1})).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_string();
    for n in 2..=3 {
        server.api.publish("chat:r", json!({"n": n})).await;
    }
    let mut req = connect_request(&server.token("bob"), &[]);
    req.subs.insert(
        "chat:r".into(),
        proto::SubscribeRequest {
            recover: true,
            offset: 1,
            epoch,
            ..Default::default()
        },
    );
    let mut c = Consumer::open(&server, req).await;
    let connect = c.expect("connect push").await.connect.expect("connect");
    let sub = &connect.subs["chat:r"];
    assert!(sub.recovered, "{sub:?}");
    let offsets: Vec<u64> = sub.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_a_bad_token_ends_with_a_disconnect_push() {
    let server = TestServer::start(config()).await;
    let mut c = Consumer::open(&server, connect_request("not-a-jwt", &["chat:a"])).await;
    let push = c.expect("disconnect push").await;
    let d = push.disconnect.expect("a disconnect push, not {push:?}");
    assert_eq!(d.code, 3500, "invalid token: {d:?}");
    assert!(
        c.next().await.is_none(),
        "the stream ends after the disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_disconnect_ends_the_stream_and_client_leaving_ends_the_session() {
    let server = TestServer::start(config()).await;
    let mut c = Consumer::open(
        &server,
        connect_request(&server.token("carol"), &["chat:d"]),
    )
    .await;
    c.expect("connect push").await.connect.expect("connect");
    server
        .api
        .ok(
            "disconnect",
            json!({"user": "carol", "disconnect": {"code": 4000, "reason": "bye"}}),
        )
        .await;
    let d = c
        .expect("disconnect push")
        .await
        .disconnect
        .expect("disconnect");
    assert_eq!((d.code, d.reason.as_str()), (4000, "bye"));
    assert!(
        c.next().await.is_none(),
        "the stream ends after the disconnect"
    );

    // A client that goes away: its session, subscription included, ends.
    let mut c = Consumer::open(
        &server,
        connect_request(&server.token("dave"), &["chat:gone"]),
    )
    .await;
    c.expect("connect push").await.connect.expect("connect");
    assert_eq!(channel_clients(&server, "chat:gone").await, 1);
    drop(c);
    let deadline = tokio::time::Instant::now() + WAIT;
    while channel_clients(&server, "chat:gone").await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session outlived its gRPC stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn channel_clients(server: &TestServer, channel: &str) -> u64 {
    let res = server.api.ok("channels", json!({})).await;
    res["channels"][channel]["num_clients"]
        .as_u64()
        .unwrap_or(0)
}

// ---- gRPC-Web, framed by hand over HTTP/1.1 ----

/// One gRPC-Web data frame: flag 0, big-endian length, message.
fn web_frame(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(body.len() as u32);
    out.extend_from_slice(&body);
    out.freeze()
}

/// Splits complete gRPC-Web frames off `buf`: (is_trailer, payload).
fn take_frames(buf: &mut BytesMut) -> Vec<(bool, Bytes)> {
    let mut frames = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        let flag = buf[0];
        buf.advance(5);
        frames.push((flag & 0x80 != 0, buf.split_to(len).freeze()));
    }
    frames
}

fn trailers(payload: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(payload)
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn http1() -> reqwest::Client {
    herald::http_client::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .build()
        .expect("reqwest client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_unary_api_call_over_http1() {
    let server = TestServer::start(config()).await;
    let url = format!(
        "http://{}/centrifugal.centrifugo.api.CentrifugoApi/Publish",
        server.addr
    );
    let req = api::PublishRequest {
        channel: "chat:web".into(),
        data: json_bytes(&json!({"from": "browser"})),
        ..Default::default()
    };
    let resp = http1()
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("apikey {API_KEY}"))
        .body(web_frame(&req))
        .send()
        .await
        .expect("gRPC-Web request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web"),
        "{:?}",
        resp.headers()
    );
    let mut body = BytesMut::from(&resp.bytes().await.expect("body")[..]);
    let frames = take_frames(&mut body);
    assert_eq!(frames.len(), 2, "one message and the trailers: {frames:?}");
    assert!(!frames[0].0 && frames[1].0);
    let reply = api::PublishResponse::decode(frames[0].1.clone()).expect("PublishResponse");
    assert!(reply.error.is_none(), "{reply:?}");
    assert_eq!(reply.result.expect("result").offset, 1);
    assert_eq!(trailers(&frames[1].1)["grpc-status"], "0");

    // Without the key: UNAUTHENTICATED (16), reported in the headers (trailers-only).
    let resp = http1()
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .body(web_frame(&req))
        .send()
        .await
        .expect("gRPC-Web request");
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let in_body = trailers(
        &take_frames(&mut BytesMut::from(&resp.bytes().await.unwrap()[..]))
            .into_iter()
            .find(|f| f.0)
            .map(|f| f.1)
            .unwrap_or_default(),
    )
    .get("grpc-status")
    .cloned();
    assert_eq!(status.or(in_body).as_deref(), Some("16"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_consume_stream_over_http1() {
    let server = TestServer::start(config()).await;
    let url = format!(
        "http://{}/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume",
        server.addr
    );
    let mut resp = http1()
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(web_frame(&connect_request(
            &server.token("web"),
            &["chat:w"],
        )))
        .send()
        .await
        .expect("gRPC-Web request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);

    let mut buf = BytesMut::new();
    let mut pushes = Vec::new();
    let mut published = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while pushes.len() < 2 {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("gRPC-Web stream stalled")
            .expect("read chunk")
            .expect("the stream ended early");
        buf.extend_from_slice(&chunk);
        for (trailer, payload) in take_frames(&mut buf) {
            assert!(!trailer, "unexpected end: {:?}", trailers(&payload));
            let push = Push::decode(payload).expect("Push");
            if push != Push::default() {
                pushes.push(push);
            }
        }
        if !pushes.is_empty() && !published {
            published = true;
            server.api.publish("chat:w", json!({"web": true})).await;
        }
    }
    assert!(pushes[0].connect.is_some(), "{:?}", pushes[0]);
    let publication = pushes[1].r#pub.as_ref().expect("publication push");
    assert_eq!(pushes[1].channel, "chat:w");
    assert_eq!(payload_json(&publication.data), json!({"web": true}));
}
