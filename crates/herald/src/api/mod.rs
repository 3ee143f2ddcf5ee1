//! The server API, executed in one place: the requests and results of every method
//! (shaped like Centrifugo's server API), their validation and defaults, and the node
//! calls behind them, in [`Executor`]. The surfaces only decode and encode: [`http`]
//! (`POST /api/<method>`, JSON), [`crate::grpc_api`] (the same methods over gRPC) and the
//! web console ([`crate::web`]).
//!
//! A method's failure is a [`ClientError`] (the client error codes of docs/codes.md); the
//! surfaces put it in the response's `error`, as Centrifugo does, rather than failing the
//! request. `batch` runs several commands in one request and answers one reply each.

pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::engine::{ClientInfo, HistoryFilter, Publication, StreamPosition};
use crate::error::{ClientError, Disconnect};
use crate::node::{Node, NodeError, NodeInfo};

pub(crate) use http::{authorized, key_matches};
pub use http::{handler, require_key};

/// Most commands of one `batch` that run at the same time when it asks for `parallel`.
const BATCH_CONCURRENCY: usize = 64;

/// Most characters of a disconnect reason given to the server API.
const MAX_REASON_CHARS: usize = 100;

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// `publish`: data to one channel.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct PublishRequest {
    /// Channel.
    pub channel: String,
    /// Payload as is (over HTTP: the `data` JSON value's text).
    #[serde(default, deserialize_with = "raw_json")]
    pub data: Option<Bytes>,
    /// Payload in standard base64; wins over `data` when not empty.
    #[serde(default)]
    pub b64data: Option<String>,
    /// Do not append to history.
    #[serde(default)]
    pub skip_history: bool,
    /// Tags delivered with the publication.
    #[serde(default)]
    pub tags: HashMap<String, String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `broadcast`: the same data to several channels.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct BroadcastRequest {
    /// Channels, at least one.
    pub channels: Vec<String>,
    /// As in [`PublishRequest`].
    #[serde(default, deserialize_with = "raw_json")]
    pub data: Option<Bytes>,
    /// As in [`PublishRequest`].
    #[serde(default)]
    pub b64data: Option<String>,
    /// As in [`PublishRequest`].
    #[serde(default)]
    pub skip_history: bool,
    /// As in [`PublishRequest`].
    #[serde(default)]
    pub tags: HashMap<String, String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `subscribe` and `unsubscribe`: a user's sessions (or one) and a channel.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct UserChannelRequest {
    /// User id.
    pub user: String,
    /// Channel.
    pub channel: String,
    /// Only this client id.
    #[serde(default)]
    pub client: Option<String>,
}

/// The disconnect a `disconnect` call sends.
#[derive(Debug, Clone, Deserialize)]
pub struct DisconnectSpec {
    /// 3000..=4999.
    pub code: u32,
    /// Cut to 100 characters.
    #[serde(default)]
    pub reason: String,
}

/// `disconnect`: close a user's connections.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct DisconnectRequest {
    /// User id.
    pub user: String,
    /// Only this client id.
    #[serde(default)]
    pub client: Option<String>,
    /// Client ids to keep.
    #[serde(default)]
    pub whitelist: Vec<String>,
    /// Default: 3503 "force disconnect".
    #[serde(default)]
    pub disconnect: Option<DisconnectSpec>,
}

/// `refresh`: change the expiry of a user's connections.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RefreshRequest {
    /// User id.
    pub user: String,
    /// Only this client id.
    #[serde(default)]
    pub client: Option<String>,
    /// Expire now.
    #[serde(default)]
    pub expired: bool,
    /// New expiry, Unix seconds; absent or 0: never.
    #[serde(default)]
    pub expire_at: Option<i64>,
}

/// `presence`, `presence_stats`, `history_remove`: one channel.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ChannelRequest {
    /// Channel.
    pub channel: String,
}

/// A stream position in a request.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct PositionSpec {
    /// Offset.
    pub offset: u64,
    /// Epoch.
    pub epoch: String,
}

/// `history`: read a channel's history.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct HistoryRequest {
    /// Channel.
    pub channel: String,
    /// Absent or 0: the position only; negative: every publication kept; else at most.
    #[serde(default)]
    pub limit: Option<i64>,
    /// Only publications after this position (before it, with `reverse`).
    #[serde(default)]
    pub since: Option<PositionSpec>,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// `channels`: channels with subscribers.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ChannelsRequest {
    /// Glob with `*`; empty: all.
    #[serde(default)]
    pub pattern: String,
}

/// `info`: no fields.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct InfoRequest {}

/// One command of a `batch`: exactly one field is set (the first set one runs, in the
/// order below; none is error 104).
#[derive(Debug, Default, Clone, Deserialize)]
#[allow(missing_docs)]
pub struct Command {
    #[serde(default)]
    pub publish: Option<PublishRequest>,
    #[serde(default)]
    pub broadcast: Option<BroadcastRequest>,
    #[serde(default)]
    pub subscribe: Option<UserChannelRequest>,
    #[serde(default)]
    pub unsubscribe: Option<UserChannelRequest>,
    #[serde(default)]
    pub disconnect: Option<DisconnectRequest>,
    #[serde(default)]
    pub presence: Option<ChannelRequest>,
    #[serde(default)]
    pub presence_stats: Option<ChannelRequest>,
    #[serde(default)]
    pub history: Option<HistoryRequest>,
    #[serde(default)]
    pub history_remove: Option<ChannelRequest>,
    #[serde(default)]
    pub info: Option<InfoRequest>,
    #[serde(default)]
    pub refresh: Option<RefreshRequest>,
    #[serde(default)]
    pub channels: Option<ChannelsRequest>,
}

/// `batch`: several commands in one request.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct BatchRequest {
    /// The commands; a `null` one is answered with error 107.
    #[serde(default)]
    pub commands: Vec<Option<Command>>,
    /// Run the commands concurrently (at most 64 at a time) instead of one after
    /// another; the replies keep the commands' order either way.
    #[serde(default)]
    pub parallel: bool,
}

// ---------------------------------------------------------------------------
// Results (serialised as the HTTP API's JSON)
// ---------------------------------------------------------------------------

/// A method's failure, as it appears in a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// Client error code.
    pub code: u32,
    /// Message.
    pub message: String,
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        ApiError {
            code: e.code,
            message: e.message.into_owned(),
        }
    }
}

/// A result with nothing in it: `{}`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Empty {}

/// `publish`'s result: the publication's position when it went into history.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PublishResult {
    /// Offset; 0 (left out) without history.
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Epoch; empty (left out) without history.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

/// One channel's outcome in `broadcast`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishResponse {
    /// Set when this channel failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// Set when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<PublishResult>,
}

/// `broadcast`'s result: one response per channel, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct BroadcastResult {
    /// Responses.
    pub responses: Vec<PublishResponse>,
}

/// `presence`'s result.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceResult {
    /// Clients by client id.
    #[serde(serialize_with = "presence_json")]
    pub presence: HashMap<String, ClientInfo>,
}

/// `presence_stats`'s result.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PresenceStatsResult {
    /// Clients present.
    pub num_clients: u32,
    /// Distinct users present.
    pub num_users: u32,
}

/// `history`'s result.
#[derive(Debug, Default, Clone, Serialize)]
pub struct HistoryResult {
    /// The publications, in the requested order.
    #[serde(serialize_with = "publications_json")]
    pub publications: Vec<Arc<Publication>>,
    /// The stream's top offset.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// One channel in `channels`' result.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChannelInfo {
    /// Subscribers, on every node.
    pub num_clients: u32,
}

/// `channels`' result.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelsResult {
    /// Channels by name.
    pub channels: BTreeMap<String, ChannelInfo>,
}

/// `info`'s result.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct InfoResult {
    /// Every live node, this one first.
    pub nodes: Vec<NodeInfo>,
}

/// One reply of a `batch`: the error, or the result under the method's name.
#[derive(Debug, Default, Clone, Serialize)]
#[allow(missing_docs)]
pub struct Reply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<BroadcastResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_remove: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<InfoResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<ChannelsResult>,
}

/// `batch`'s result: one reply per command, in order.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BatchResult {
    /// Replies.
    pub replies: Vec<Reply>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Over HTTP, `data` is any JSON value, kept as its text.
fn raw_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
    let raw = Option::<Box<RawValue>>::deserialize(d)?;
    Ok(raw.map(|r| Bytes::copy_from_slice(r.get().as_bytes())))
}

/// Raw JSON bytes as a JSON value; `null` when empty, a string when not JSON.
fn json_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// A ClientInfo as the HTTP API shows it: `conn_info` and `chan_info` as JSON, when set.
pub fn client_info_json(i: &ClientInfo) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("client".into(), i.client.clone().into());
    m.insert("user".into(), i.user.clone().into());
    for (k, v) in [("conn_info", &i.conn_info), ("chan_info", &i.chan_info)] {
        if !v.is_empty() {
            m.insert(k.into(), serde_json::from_slice(v).unwrap_or_default());
        }
    }
    serde_json::Value::Object(m)
}

fn presence_json<S: Serializer>(p: &HashMap<String, ClientInfo>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(p.iter().map(|(k, v)| (k, client_info_json(v))))
}

fn publications_json<S: Serializer>(pubs: &[Arc<Publication>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(pubs.iter().map(|p| {
        let mut m = serde_json::Map::new();
        m.insert("data".into(), json_value(&p.data));
        if let Some(info) = &p.info {
            m.insert("info".into(), client_info_json(info));
        }
        if p.offset > 0 {
            m.insert("offset".into(), p.offset.into());
        }
        if !p.tags.is_empty() {
            m.insert(
                "tags".into(),
                serde_json::to_value(&p.tags).unwrap_or_default(),
            );
        }
        serde_json::Value::Object(m)
    }))
}

// ---------------------------------------------------------------------------
// The executor
// ---------------------------------------------------------------------------

/// Runs server-API methods against a node. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    node: Arc<Node>,
}

type Outcome<T> = Result<T, ClientError>;

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// The payload: `b64data` when set, else `data`, which must be there.
fn payload(data: &Option<Bytes>, b64data: &Option<String>) -> Outcome<Bytes> {
    if let Some(b64) = non_empty(b64data) {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|_| ClientError::BAD_REQUEST.with_message("b64data is not valid base64"));
    }
    match data {
        Some(d) if !d.is_empty() => Ok(d.clone()),
        _ => Err(ClientError::BAD_REQUEST.with_message("data required")),
    }
}

fn required(value: &str, name: &'static str) -> Outcome<()> {
    if value.is_empty() {
        return Err(ClientError::BAD_REQUEST.with_message(format!("{name} required")));
    }
    Ok(())
}

impl Executor {
    /// An executor for `node`.
    pub fn new(node: Arc<Node>) -> Executor {
        Executor { node }
    }

    /// The node the executor runs methods on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    async fn publish_one(
        &self,
        channel: &str,
        data: Bytes,
        tags: HashMap<String, String>,
        skip_history: bool,
    ) -> Outcome<PublishResult> {
        let pos = self
            .node
            .publish(channel, data, None, tags, skip_history)
            .await?;
        Ok(if pos.offset > 0 {
            PublishResult {
                offset: pos.offset,
                epoch: pos.epoch,
            }
        } else {
            PublishResult::default()
        })
    }

    /// Publishes to one channel.
    pub async fn publish(&self, r: PublishRequest) -> Outcome<PublishResult> {
        let data = payload(&r.data, &r.b64data)?;
        self.publish_one(&r.channel, data, r.tags, r.skip_history)
            .await
    }

    /// Publishes the same data to each channel, one after another; one failing channel
    /// does not stop the others.
    pub async fn broadcast(&self, r: BroadcastRequest) -> Outcome<BroadcastResult> {
        if r.channels.is_empty() {
            return Err(ClientError::BAD_REQUEST.with_message("channels required"));
        }
        let data = payload(&r.data, &r.b64data)?;
        let mut responses = Vec::with_capacity(r.channels.len());
        for channel in &r.channels {
            let one = self
                .publish_one(channel, data.clone(), r.tags.clone(), r.skip_history)
                .await;
            responses.push(match one {
                Ok(result) => PublishResponse {
                    error: None,
                    result: Some(result),
                },
                Err(e) => PublishResponse {
                    error: Some(e.into()),
                    result: None,
                },
            });
        }
        Ok(BroadcastResult { responses })
    }

    /// Subscribes a user's sessions (on every node) to a channel of a configured namespace.
    pub async fn subscribe(&self, r: UserChannelRequest) -> Outcome<Empty> {
        required(&r.user, "user")?;
        self.node
            .subscribe_user(&r.user, non_empty(&r.client), &r.channel)
            .await?;
        Ok(Empty {})
    }

    /// Ends a user's subscriptions (on every node) to a channel.
    pub async fn unsubscribe(&self, r: UserChannelRequest) -> Outcome<Empty> {
        required(&r.user, "user")?;
        self.node
            .unsubscribe_user(&r.user, non_empty(&r.client), &r.channel)
            .await?;
        Ok(Empty {})
    }

    /// Closes a user's connections (on every node).
    pub async fn disconnect(&self, r: DisconnectRequest) -> Outcome<Empty> {
        required(&r.user, "user")?;
        let disconnect = match r.disconnect {
            Some(spec) => {
                if !(3000..5000).contains(&spec.code) {
                    return Err(ClientError::BAD_REQUEST
                        .with_message("disconnect.code must be in 3000..4999"));
                }
                let reason: String = spec.reason.chars().take(MAX_REASON_CHARS).collect();
                Disconnect::custom(spec.code, reason)
            }
            None => Disconnect::FORCE_NO_RECONNECT,
        };
        self.node
            .disconnect_user(&r.user, non_empty(&r.client), &r.whitelist, &disconnect)
            .await?;
        Ok(Empty {})
    }

    /// Changes the expiry of a user's connections (on every node).
    pub async fn refresh(&self, r: RefreshRequest) -> Outcome<Empty> {
        required(&r.user, "user")?;
        let expire_at = r.expire_at.filter(|at| *at > 0);
        self.node
            .refresh_user(&r.user, non_empty(&r.client), expire_at, r.expired)
            .await?;
        Ok(Empty {})
    }

    /// Who is in a channel.
    pub async fn presence(&self, r: ChannelRequest) -> Outcome<PresenceResult> {
        let presence = self.node.presence(&r.channel).await?;
        Ok(PresenceResult { presence })
    }

    /// How many clients and users are in a channel.
    pub async fn presence_stats(&self, r: ChannelRequest) -> Outcome<PresenceStatsResult> {
        let (num_clients, num_users) = self.node.presence_stats(&r.channel).await?;
        Ok(PresenceStatsResult {
            num_clients,
            num_users,
        })
    }

    /// Reads a channel's history.
    pub async fn history(&self, r: HistoryRequest) -> Outcome<HistoryResult> {
        let filter = HistoryFilter {
            since: r.since.map(|s| StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            limit: match r.limit {
                None | Some(0) => Some(0),
                Some(n) if n < 0 => None,
                Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            },
            reverse: r.reverse,
        };
        let h = self
            .node
            .history(&r.channel, &filter)
            .await
            .map_err(|e| match e {
                NodeError::UnrecoverablePosition => ClientError::UNRECOVERABLE_POSITION,
                other => other.into(),
            })?;
        Ok(HistoryResult {
            publications: h.publications,
            offset: h.position.offset,
            epoch: h.position.epoch,
        })
    }

    /// Drops a channel's history.
    pub async fn history_remove(&self, r: ChannelRequest) -> Outcome<Empty> {
        self.node.remove_history(&r.channel).await?;
        Ok(Empty {})
    }

    /// Channels with subscribers on any node whose names match the pattern, with their
    /// subscribers summed over the nodes (as Centrifugo, through a survey of every node).
    pub async fn channels(&self, r: ChannelsRequest) -> Outcome<ChannelsResult> {
        let channels = self
            .node
            .channels(&r.pattern)
            .await?
            .into_iter()
            .map(|(name, num_clients)| (name, ChannelInfo { num_clients }))
            .collect();
        Ok(ChannelsResult { channels })
    }

    /// Every live node.
    pub async fn info(&self, _r: InfoRequest) -> Outcome<InfoResult> {
        Ok(InfoResult {
            nodes: self.node.nodes(),
        })
    }

    /// Runs one command of a batch.
    pub async fn command(&self, cmd: Option<Command>) -> Reply {
        fn reply<T>(outcome: Outcome<T>, set: impl FnOnce(&mut Reply, T)) -> Reply {
            let mut r = Reply::default();
            match outcome {
                Ok(v) => set(&mut r, v),
                Err(e) => r.error = Some(e.into()),
            }
            r
        }
        let Some(cmd) = cmd else {
            return reply::<()>(
                Err(ClientError::BAD_REQUEST.with_message("null command")),
                |_, _| {},
            );
        };
        if let Some(r) = cmd.publish {
            return reply(self.publish(r).await, |x, v| x.publish = Some(v));
        }
        if let Some(r) = cmd.broadcast {
            return reply(self.broadcast(r).await, |x, v| x.broadcast = Some(v));
        }
        if let Some(r) = cmd.subscribe {
            return reply(self.subscribe(r).await, |x, v| x.subscribe = Some(v));
        }
        if let Some(r) = cmd.unsubscribe {
            return reply(self.unsubscribe(r).await, |x, v| x.unsubscribe = Some(v));
        }
        if let Some(r) = cmd.disconnect {
            return reply(self.disconnect(r).await, |x, v| x.disconnect = Some(v));
        }
        if let Some(r) = cmd.presence {
            return reply(self.presence(r).await, |x, v| x.presence = Some(v));
        }
        if let Some(r) = cmd.presence_stats {
            return reply(self.presence_stats(r).await, |x, v| {
                x.presence_stats = Some(v)
            });
        }
        if let Some(r) = cmd.history {
            return reply(self.history(r).await, |x, v| x.history = Some(v));
        }
        if let Some(r) = cmd.history_remove {
            return reply(self.history_remove(r).await, |x, v| {
                x.history_remove = Some(v)
            });
        }
        if let Some(r) = cmd.info {
            return reply(self.info(r).await, |x, v| x.info = Some(v));
        }
        if let Some(r) = cmd.refresh {
            return reply(self.refresh(r).await, |x, v| x.refresh = Some(v));
        }
        if let Some(r) = cmd.channels {
            return reply(self.channels(r).await, |x, v| x.channels = Some(v));
        }
        reply::<()>(Err(ClientError::METHOD_NOT_FOUND), |_, _| {})
    }

    /// Runs the commands of a batch, in order or concurrently, and answers one reply per
    /// command in the commands' order.
    pub async fn batch(&self, r: BatchRequest) -> BatchResult {
        let replies = if r.parallel {
            futures_util::stream::iter(r.commands)
                .map(|cmd| self.command(cmd))
                .buffered(BATCH_CONCURRENCY)
                .collect()
                .await
        } else {
            let mut replies = Vec::with_capacity(r.commands.len());
            for cmd in r.commands {
                replies.push(self.command(cmd).await);
            }
            replies
        };
        BatchResult { replies }
    }
}
