//! Herald's bidirectional gRPC transport (`herald.stream.HeraldStream/Connect`), with a
//! tonic client generated from `proto/herald_stream.proto`: the full client protocol
//! (connect, subscribe, publish, history, recovery, ping/pong), malformed input and bad
//! tokens.

mod support;

use std::collections::VecDeque;

use bytes::Bytes;
use herald::protocol::proto::{self, Command, Push, Reply};
use herald::transport::grpc::client::stream::herald_stream_client::HeraldStreamClient;
use herald::transport::grpc::{PreEncoded, PreEncodedCodec};
use prost::Message;
use serde_json::json;
use support::{TestServer, WAIT, cmd, payload_json};
use tokio::sync::mpsc;
use tonic::transport::Channel;

fn config() -> serde_json::Value {
    json!({
        "channel": {
            "namespaces": [{
                "name": "chat", "history_size": 100, "history_ttl": "300s",
                "force_recovery": true, "allow_subscribe_for_client": true,
                "allow_publish_for_subscriber": true, "allow_history_for_subscriber": true
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

/// A protocol client over one `Connect` call.
struct Bidi {
    tx: mpsc::Sender<Command>,
    rx: tonic::Streaming<Reply>,
    next_id: u32,
    inbox: VecDeque<Reply>,
    auto_pong: bool,
    pings: usize,
}

impl Bidi {
    async fn open(server: &TestServer) -> Bidi {
        let mut client = HeraldStreamClient::new(channel(server).await);
        let (tx, commands) = mpsc::channel::<Command>(16);
        let outbound = futures_util::stream::unfold(commands, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        });
        let rx = tokio::time::timeout(WAIT, client.connect(outbound))
            .await
            .expect("Connect timed out")
            .expect("Connect failed")
            .into_inner();
        Bidi {
            tx,
            rx,
            next_id: 0,
            inbox: VecDeque::new(),
            auto_pong: true,
            pings: 0,
        }
    }

    async fn connected(server: &TestServer, user: &str) -> (Bidi, proto::ConnectResult) {
        let mut c = Bidi::open(server).await;
        let reply = c.call(cmd::connect(&server.token(user))).await;
        assert!(reply.error.is_none(), "connect failed: {reply:?}");
        (c, reply.connect.expect("connect result"))
    }

    async fn send(&mut self, cmd: Command) {
        self.tx.send(cmd).await.expect("request stream closed");
    }

    /// Reads one message into the inbox, answering pings; `Ok(false)` when the stream
    /// ended with status OK.
    async fn pump(&mut self) -> Result<bool, tonic::Status> {
        let msg = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .unwrap_or_else(|_| panic!("nothing from the server within {WAIT:?}"))?;
        match msg {
            None => Ok(false),
            Some(r) if r == Reply::default() => {
                self.pings += 1;
                if self.auto_pong {
                    self.send(Command::default()).await;
                }
                Ok(true)
            }
            Some(r) => {
                self.inbox.push_back(r);
                Ok(true)
            }
        }
    }

    async fn call(&mut self, mut cmd: Command) -> Reply {
        self.next_id += 1;
        cmd.id = self.next_id;
        let id = cmd.id;
        self.send(cmd).await;
        loop {
            if let Some(i) = self.inbox.iter().position(|r| r.id == id) {
                return self.inbox.remove(i).expect("present");
            }
            match self.pump().await {
                Ok(true) => {}
                other => panic!("stream ended before reply {id}: {other:?}"),
            }
        }
    }

    async fn call_ok(&mut self, cmd: Command) -> Reply {
        let reply = self.call(cmd).await;
        assert!(reply.error.is_none(), "command failed: {reply:?}");
        reply
    }

    async fn next_push(&mut self) -> Push {
        loop {
            if let Some(i) = self.inbox.iter().position(|r| r.push.is_some()) {
                return self.inbox.remove(i).and_then(|r| r.push).expect("push");
            }
            match self.pump().await {
                Ok(true) => {}
                other => panic!("stream ended while waiting for a push: {other:?}"),
            }
        }
    }

    async fn expect_pub(&mut self, channel: &str) -> proto::Publication {
        let push = self.next_push().await;
        assert_eq!(push.channel, channel, "{push:?}");
        push.r#pub.expect("publication push")
    }

    /// Reads until the stream ends; returns the disconnect push seen on the way and the
    /// final status.
    async fn until_end(&mut self) -> (Option<proto::Disconnect>, Result<(), tonic::Status>) {
        let mut disconnect = None;
        loop {
            while let Some(r) = self.inbox.pop_front() {
                if let Some(d) = r.push.and_then(|p| p.disconnect) {
                    disconnect = Some(d);
                }
            }
            match self.pump().await {
                Ok(true) => {}
                Ok(false) => return (disconnect, Ok(())),
                Err(s) => return (disconnect, Err(s)),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscribe_receive_publish_and_history() {
    let server = TestServer::start(config()).await;
    let (mut c, res) = Bidi::connected(&server, "alice").await;
    assert!(!res.client.is_empty());
    let sub = c
        .call_ok(cmd::subscribe("chat:room"))
        .await
        .subscribe
        .expect("subscribe result");
    assert!(sub.recoverable && !sub.epoch.is_empty(), "{sub:?}");

    server
        .api
        .publish("chat:room", json!({"from": "api"}))
        .await;
    let p = c.expect_pub("chat:room").await;
    assert_eq!(payload_json(&p.data), json!({"from": "api"}));
    assert_eq!(p.offset, 1);

    let reply = c
        .call_ok(cmd::publish("chat:room", &json!({"from": "grpc"})))
        .await;
    assert!(reply.publish.is_some(), "{reply:?}");
    let p = c.expect_pub("chat:room").await;
    assert_eq!(payload_json(&p.data), json!({"from": "grpc"}));
    assert_eq!(p.info.expect("publisher info").user, "alice");

    let h = c
        .call_ok(cmd::history("chat:room", 10, None, false))
        .await
        .history
        .expect("history result");
    assert_eq!(h.offset, 2);
    assert_eq!(h.epoch, sub.epoch);
    let data: Vec<_> = h
        .publications
        .iter()
        .map(|p| payload_json(&p.data))
        .collect();
    assert_eq!(data, [json!({"from": "api"}), json!({"from": "grpc"})]);

    // Errors are replies, and the connection stays.
    let reply = c.call(cmd::subscribe("nope:x")).await;
    assert!(reply.error.is_some(), "{reply:?}");
    c.call_ok(cmd::ping()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_missed_publications_after_reconnect() {
    let server = TestServer::start(config()).await;
    let (mut c, _) = Bidi::connected(&server, "bob").await;
    let sub = c
        .call_ok(cmd::subscribe("chat:rec"))
        .await
        .subscribe
        .expect("subscribe");
    server.api.publish("chat:rec", json!({"n": 1})).await;
    let last = c.expect_pub("chat:rec").await.offset;
    drop(c);

    for n in 2..=4 {
        server.api.publish("chat:rec", json!({"n": n})).await;
    }
    let (mut c, _) = Bidi::connected(&server, "bob").await;
    let sub = c
        .call_ok(cmd::recover("chat:rec", last, &sub.epoch))
        .await
        .subscribe
        .expect("subscribe");
    assert!(sub.recovered && sub.was_recovering, "{sub:?}");
    let got: Vec<_> = sub
        .publications
        .iter()
        .map(|p| payload_json(&p.data))
        .collect();
    assert_eq!(got, [json!({"n": 2}), json!({"n": 3}), json!({"n": 4})]);
    server.api.publish("chat:rec", json!({"n": 5})).await;
    assert_eq!(c.expect_pub("chat:rec").await.offset, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_ends_the_call_with_invalid_argument() {
    let server = TestServer::start(config()).await;
    // A raw client: the messages are bytes, so one can be garbage.
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    grpc.ready().await.expect("ready");
    let (tx, rx) = mpsc::channel::<PreEncoded>(4);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let connect = cmd::connect(&server.token("eve"));
    let connect = Command { id: 1, ..connect };
    tx.send(PreEncoded(connect.encode_to_vec().into()))
        .await
        .unwrap();
    let mut rx = grpc
        .streaming(
            tonic::Request::new(outbound),
            http::uri::PathAndQuery::from_static("/herald.stream.HeraldStream/Connect"),
            PreEncodedCodec::<Reply>::default(),
        )
        .await
        .expect("Connect")
        .into_inner();
    let reply = tokio::time::timeout(WAIT, rx.message())
        .await
        .expect("connect reply in time")
        .expect("status")
        .expect("a message");
    assert!(reply.connect.is_some(), "{reply:?}");

    // Field 1 (id, a varint) sent as length-delimited: not a Command.
    tx.send(PreEncoded(Bytes::from_static(&[0x0a, 0x02, 0xff, 0xff])))
        .await
        .unwrap();
    let status = loop {
        match tokio::time::timeout(WAIT, rx.message())
            .await
            .expect("an end in time")
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended with OK, expected INVALID_ARGUMENT"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed Command"),
        "the status says what is wrong: {status:?}"
    );

    // The server is still up.
    let (mut c, _) = Bidi::connected(&server, "eve").await;
    c.call_ok(cmd::ping()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_ends_with_a_disconnect() {
    let server = TestServer::start(config()).await;
    let mut c = Bidi::open(&server).await;
    c.send(Command {
        id: 1,
        ..cmd::connect("not-a-jwt")
    })
    .await;
    let (disconnect, status) = c.until_end().await;
    assert_eq!(disconnect.map(|d| d.code), Some(3500));
    assert!(status.is_ok(), "{status:?}");

    // A command before connect is a protocol violation.
    let mut c = Bidi::open(&server).await;
    c.send(Command {
        id: 1,
        ..cmd::subscribe("chat:x")
    })
    .await;
    let (disconnect, _) = c.until_end().await;
    assert_eq!(disconnect.map(|d| d.code), Some(3501));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_empty_replies_and_a_silent_client_is_dropped() {
    let mut cfg = config();
    support::merge(
        &mut cfg,
        json!({"client": {"ping_interval": "1s", "pong_timeout": "500ms"}}),
    );
    let server = TestServer::start(cfg).await;
    let (mut c, res) = Bidi::connected(&server, "frank").await;
    assert!(res.ping > 0, "{res:?}");
    while c.pings < 2 {
        assert!(c.pump().await.expect("stream"), "stream ended");
    }
    c.call_ok(cmd::ping()).await;

    c.auto_pong = false;
    let (disconnect, status) = c.until_end().await;
    assert_eq!(disconnect.map(|d| d.code), Some(3012), "no pong");
    assert!(status.is_ok(), "{status:?}");
}
