//! The server API's `batch` method (Centrifugo v6's shape), over HTTP and gRPC: several
//! commands in one request, one reply each in the commands' order, each reply the
//! method's result under its name or its own error; `parallel` runs them concurrently
//! with the same replies. Publications made in a batch reach a live subscriber, and user
//! commands act on live sessions.

mod support;

use std::collections::BTreeSet;

use herald::grpc_api::proto as api;
use herald::grpc_api::proto::centrifugo_api_client::CentrifugoApiClient;
use herald::protocol::Encoding;
use serde_json::{Value, json};
use support::{API_KEY, TestServer, WAIT, json_bytes, payload_json};
use tonic::transport::Channel;

fn config() -> Value {
    json!({
        "grpc_api": {"enabled": true},
        "channel": {
            "namespaces": [{
                "name": "chat", "history_size": 100, "history_ttl": "300s",
                "presence": true, "allow_subscribe_for_client": true
            }]
        }
    })
}

/// `POST /api/batch`: the whole response body (batch answers at the top level).
async fn batch(server: &TestServer, body: Value) -> Value {
    let (status, text) = server
        .api
        .raw("batch", body.to_string().into_bytes(), Some(API_KEY))
        .await;
    assert_eq!(status, 200, "batch {body}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_batch_answers_each_command_in_order() {
    let server = TestServer::start(config()).await;
    let (mut alice, _) = server.connected(Encoding::Json, "alice").await;
    alice.subscribe("chat:room").await;

    let resp = batch(
        &server,
        json!({"commands": [
            {"publish": {"channel": "chat:room", "data": {"n": 1}}},
            {"publish": {"channel": "nope:room", "data": {"n": 2}}},
            {"broadcast": {"channels": ["chat:room", "chat:other"], "data": {"n": 3}}},
            {"history": {"channel": "chat:room", "limit": -1}},
            {"presence_stats": {"channel": "chat:room"}},
            {"info": {}},
            {},
            null,
            {"publish": {"channel": "chat:room"}}
        ]}),
    )
    .await;
    let replies = resp["replies"].as_array().expect("replies").clone();
    assert_eq!(replies.len(), 9, "{resp}");
    assert_eq!(replies[0]["publish"]["offset"], 1, "{}", replies[0]);
    assert_eq!(
        replies[1]["error"]["code"], 102,
        "unknown namespace: {}",
        replies[1]
    );
    assert!(replies[1].get("publish").is_none());
    let responses = &replies[2]["broadcast"]["responses"];
    assert_eq!(responses[0]["result"]["offset"], 2, "{responses}");
    assert_eq!(responses[1]["result"]["offset"], 1, "{responses}");
    let pubs = replies[3]["history"]["publications"].as_array().unwrap();
    let data: Vec<&Value> = pubs.iter().map(|p| &p["data"]).collect();
    assert_eq!(data, vec![&json!({"n": 1}), &json!({"n": 3})]);
    assert_eq!(
        replies[4]["presence_stats"],
        json!({"num_clients": 1, "num_users": 1})
    );
    assert_eq!(replies[5]["info"]["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(
        replies[6]["error"]["code"], 104,
        "no method: {}",
        replies[6]
    );
    assert_eq!(replies[7]["error"]["code"], 107, "null: {}", replies[7]);
    assert_eq!(
        replies[8]["error"],
        json!({"code": 107, "message": "data required"})
    );

    // The subscriber got both publications of its channel, in order.
    for n in [1, 3] {
        let p = alice.expect_pub("chat:room").await;
        assert_eq!(payload_json(&p.data), json!({ "n": n }));
    }

    // User commands in a batch act on the sessions.
    let resp = batch(
        &server,
        json!({"commands": [
            {"subscribe": {"user": "alice", "channel": "chat:pushed"}},
            {"refresh": {"user": "alice", "expire_at": support::now_secs() + 600}}
        ]}),
    )
    .await;
    assert_eq!(
        resp,
        json!({"replies": [{"subscribe": {}}, {"refresh": {}}]})
    );
    let push = alice
        .push_where("subscribe push", |p| p.subscribe.is_some())
        .await;
    assert_eq!(push.channel, "chat:pushed");
    alice
        .push_where("refresh push", |p| p.refresh.is_some())
        .await;
    let resp = batch(
        &server,
        json!({"commands": [
            {"disconnect": {"user": "alice", "disconnect": {"code": 4001, "reason": "batch"}}}
        ]}),
    )
    .await;
    assert_eq!(resp, json!({"replies": [{"disconnect": {}}]}));
    assert_eq!(alice.expect_close_code(4001).await, "batch");

    // A body that is not a batch is 400, as for any method.
    let (status, text) = server
        .api
        .raw("batch", br#"{"commands": 5}"#.to_vec(), Some(API_KEY))
        .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_parallel_batch_runs_every_command() {
    let server = TestServer::start(config()).await;
    let (mut alice, _) = server.connected(Encoding::Json, "alice").await;
    alice.subscribe("chat:par").await;
    let commands: Vec<Value> = (1..=100)
        .map(|n| json!({"publish": {"channel": "chat:par", "data": {"n": n}}}))
        .collect();
    let resp = batch(&server, json!({"commands": commands, "parallel": true})).await;
    let replies = resp["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 100);
    let offsets: BTreeSet<u64> = replies
        .iter()
        .map(|r| {
            r["publish"]["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("{r}"))
        })
        .collect();
    assert_eq!(offsets, (1..=100).collect(), "every publication, once each");
    let mut seen = BTreeSet::new();
    for _ in 1..=100 {
        let p = alice.expect_pub("chat:par").await;
        seen.insert(payload_json(&p.data)["n"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=100).collect());
}

async fn grpc_client(server: &TestServer) -> CentrifugoApiClient<Channel> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_batch_answers_each_command_in_order() {
    let server = TestServer::start(config()).await;
    let (mut alice, _) = server.connected(Encoding::Json, "alice").await;
    alice.subscribe("chat:g").await;
    let mut client = grpc_client(&server).await;
    let publish = |n: u64| api::Command {
        publish: Some(api::PublishRequest {
            channel: "chat:g".into(),
            data: json_bytes(&json!({ "n": n })),
            ..Default::default()
        }),
        ..Default::default()
    };
    for parallel in [false, true] {
        let mut request = tonic::Request::new(api::BatchRequest {
            commands: vec![
                publish(1),
                api::Command::default(),
                api::Command {
                    history: Some(api::HistoryRequest {
                        channel: "chat:g".into(),
                        limit: 0,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                api::Command {
                    presence: Some(api::PresenceRequest {
                        channel: "nope:x".into(),
                    }),
                    ..Default::default()
                },
            ],
            parallel,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("apikey {API_KEY}").parse().expect("metadata"),
        );
        let replies = client
            .batch(request)
            .await
            .expect("batch")
            .into_inner()
            .replies;
        assert_eq!(replies.len(), 4, "{replies:?}");
        let offset = replies[0].publish.as_ref().expect("publish result").offset;
        assert_eq!(replies[1].error.as_ref().map(|e| e.code), Some(104));
        let history = replies[2].history.as_ref().expect("history result");
        assert_eq!(history.offset, offset, "history answers the top");
        assert_eq!(replies[3].error.as_ref().map(|e| e.code), Some(102));
        let p = alice.expect_pub("chat:g").await;
        assert_eq!(p.offset, offset);
    }
    let status = client
        .batch(api::BatchRequest::default())
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}
