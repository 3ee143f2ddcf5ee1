//! The server API over gRPC (`centrifugal.centrifugo.api.CentrifugoApi`) with a tonic
//! client generated from `proto/api.proto`: API-key metadata, every method against live
//! WebSocket clients, method errors in the response's `error`, and the `grpc_api.enabled`
//! switch.

mod support;

use herald::grpc_api::proto as api;
use herald::grpc_api::proto::centrifugo_api_client::CentrifugoApiClient;
use herald::protocol::Encoding;
use serde_json::json;
use support::{API_KEY, TestServer, WAIT, json_bytes, payload_json};
use tonic::transport::Channel;

fn config() -> serde_json::Value {
    json!({
        "grpc_api": {"enabled": true},
        "channel": {
            "namespaces": [{
                "name": "chat", "history_size": 10, "history_ttl": "300s",
                "presence": true, "allow_subscribe_for_client": true
            }]
        }
    })
}

async fn client(server: &TestServer) -> CentrifugoApiClient<Channel> {
    let channel = tokio::time::timeout(
        WAIT,
        Channel::from_shared(format!("http://{}", server.addr))
            .expect("uri")
            .connect(),
    )
    .await
    .expect("gRPC connect timed out")
    .expect("gRPC connect");
    CentrifugoApiClient::new(channel)
}

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("apikey {key}").parse().expect("metadata"),
    );
    req
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    with_key(msg, API_KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required() {
    let server = TestServer::start(config()).await;
    let mut api = client(&server).await;
    let req = api::InfoRequest {};
    let status = api.info(req).await.expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = api
        .info(with_key(req, "wrong"))
        .await
        .expect_err("wrong key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let info = api.info(authed(req)).await.expect("right key").into_inner();
    assert_eq!(info.result.expect("result").nodes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_act_on_live_clients() {
    let server = TestServer::start(config()).await;
    let mut api = client(&server).await;
    let (mut ws, connect) = server.connected(Encoding::Protobuf, "alice").await;
    ws.subscribe("chat:a").await;

    // publish, broadcast (one bad channel: its own error, the others delivered)
    let res = api
        .publish(authed(api::PublishRequest {
            channel: "chat:a".into(),
            data: json_bytes(&json!({"n": 1})),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let published = res.result.expect("publish result");
    assert_eq!(published.offset, 1);
    assert!(!published.epoch.is_empty());
    assert_eq!(
        payload_json(&ws.expect_pub("chat:a").await.data),
        json!({"n": 1})
    );

    let res = api
        .broadcast(authed(api::BroadcastRequest {
            channels: vec!["chat:a".into(), "nope:x".into()],
            b64data: "eyJuIjoyfQ==".into(), // {"n":2}
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let responses = res.result.expect("broadcast result").responses;
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].result.as_ref().map(|r| r.offset), Some(2));
    assert_eq!(responses[1].error.as_ref().map(|e| e.code), Some(102));
    assert_eq!(
        payload_json(&ws.expect_pub("chat:a").await.data),
        json!({"n": 2})
    );

    // method errors come in `error`, not as a gRPC status
    let res = api
        .publish(authed(api::PublishRequest {
            channel: "chat:a".into(),
            ..Default::default()
        }))
        .await
        .expect("an error response is still OK")
        .into_inner();
    assert_eq!(
        res.error.map(|e| e.code),
        Some(107),
        "data required: bad request"
    );

    // history, presence, presence_stats, channels, info
    let h = api
        .history(authed(api::HistoryRequest {
            channel: "chat:a".into(),
            limit: -1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .expect("history result");
    assert_eq!(h.offset, 2);
    assert_eq!(h.epoch, published.epoch);
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [1, 2]
    );
    let since = api
        .history(authed(api::HistoryRequest {
            channel: "chat:a".into(),
            limit: 10,
            since: Some(api::StreamPosition {
                offset: 1,
                epoch: published.epoch.clone(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .expect("history result");
    assert_eq!(since.publications.len(), 1);
    assert_eq!(payload_json(&since.publications[0].data), json!({"n": 2}));

    let p = api
        .presence(authed(api::PresenceRequest {
            channel: "chat:a".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .expect("presence result");
    assert_eq!(p.presence[&connect.client].user, "alice");
    let stats = api
        .presence_stats(authed(api::PresenceStatsRequest {
            channel: "chat:a".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .expect("presence_stats result");
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));
    let chans = api
        .channels(authed(api::ChannelsRequest {
            pattern: "chat:*".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .expect("channels result");
    assert_eq!(chans.channels["chat:a"].num_clients, 1);
    let info = api
        .info(authed(api::InfoRequest {}))
        .await
        .unwrap()
        .into_inner()
        .result
        .expect("info result");
    assert_eq!(info.nodes[0].num_clients, 1);

    // history_remove
    let res = api
        .history_remove(authed(api::HistoryRemoveRequest {
            channel: "chat:a".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(res.error.is_none(), "{res:?}");
    let h = api
        .history(authed(api::HistoryRequest {
            channel: "chat:a".into(),
            limit: -1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .expect("history result");
    assert!(h.publications.is_empty(), "{h:?}");

    // server-side subscribe and unsubscribe
    api.subscribe(authed(api::SubscribeRequest {
        channel: "chat:b".into(),
        user: "alice".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let push = ws
        .push_where("subscribe push", |p| p.subscribe.is_some())
        .await;
    assert_eq!(push.channel, "chat:b");
    api.unsubscribe(authed(api::UnsubscribeRequest {
        channel: "chat:b".into(),
        user: "alice".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let push = ws
        .push_where("unsubscribe push", |p| p.unsubscribe.is_some())
        .await;
    assert_eq!(push.channel, "chat:b");

    // refresh, then disconnect with a custom code
    api.refresh(authed(api::RefreshRequest {
        user: "alice".into(),
        expire_at: support::now_secs() + 3600,
        ..Default::default()
    }))
    .await
    .unwrap();
    let push = ws.push_where("refresh push", |p| p.refresh.is_some()).await;
    assert!(push.refresh.expect("refresh").expires);
    let bad = api
        .disconnect(authed(api::DisconnectRequest {
            user: "alice".into(),
            disconnect: Some(api::Disconnect {
                code: 42,
                reason: String::new(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bad.error.map(|e| e.code), Some(107), "code out of range");
    api.disconnect(authed(api::DisconnectRequest {
        user: "alice".into(),
        disconnect: Some(api::Disconnect {
            code: 4001,
            reason: "grpc says bye".into(),
        }),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(ws.expect_close_code(4001).await, "grpc says bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_grpc_api_is_not_served() {
    let server = TestServer::start(json!({"grpc_api": {"enabled": false}})).await;
    let mut api = client(&server).await;
    let status = api
        .info(authed(api::InfoRequest {}))
        .await
        .expect_err("grpc_api is disabled");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}
