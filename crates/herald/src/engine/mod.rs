//! The engine: the seams that swap at run time. [`Broker`] moves publications, join and
//! leave events between nodes and keeps each channel's history stream; [`PresenceManager`]
//! keeps who is subscribed where; [`control::Controller`] carries commands between nodes
//! (disconnect a user, an emulation frame for a session elsewhere, node announcements).
//! [`Engine`] holds them with the background work they own and is built from
//! `engine.type` by [`Engine::build`]; `Node` never names a concrete engine. `memory` is
//! the single-process default; `redis` shares channels, history and presence between
//! nodes.

pub mod control;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Who published or joined: the protocol's ClientInfo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// User id from the token ("" for anonymous).
    pub user: String,
    /// Client (connection) id.
    pub client: String,
    /// Connection info from the token, raw JSON.
    pub conn_info: Bytes,
    /// Channel info from the subscription token, raw JSON.
    pub chan_info: Bytes,
}

/// One publication in a channel stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publication {
    /// Application payload (raw JSON for JSON clients, any bytes for Protobuf clients).
    pub data: Bytes,
    /// Publisher, when a client published.
    pub info: Option<ClientInfo>,
    /// Position in the channel stream; 0 when the channel keeps no history.
    pub offset: u64,
    /// Optional key-value tags from the server API.
    pub tags: HashMap<String, String>,
    /// Unix time in milliseconds when the broker accepted it.
    pub time: i64,
}

/// A position in a channel stream: the offset of the last publication and the stream's
/// epoch, which changes whenever the stream is lost (restart, expiry, removal).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// Offset of the newest publication (0 for an empty stream).
    pub offset: u64,
    /// Identity of this incarnation of the stream.
    pub epoch: String,
}

/// How a publication is kept.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Keep at most this many publications (0: no history).
    pub history_size: usize,
    /// Keep each publication at most this long.
    pub history_ttl: Duration,
    /// How long the stream position outlives its last publication (0: the broker's default).
    pub history_meta_ttl: Duration,
}

/// Which part of a history stream to read.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    /// Start after this position (exclusive); its epoch must match the stream's.
    pub since: Option<StreamPosition>,
    /// At most this many publications; `None` for all, `Some(0)` for the position only.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// The result of a history read.
#[derive(Clone, Debug, Default)]
pub struct HistoryResult {
    /// The matching publications in the requested order.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's current top position.
    pub position: StreamPosition,
}

/// Engine failure; shown to clients as an internal error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backing store failed or is unreachable.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// Receives events from the broker. Registered once by the node at start.
///
/// Calls for one channel arrive in stream order and never concurrently; implementations
/// must not block (they hand bytes to bounded queues and return). The node checks each
/// publication's offset and epoch against what its subscribers have reached, so a
/// delivery that the broker lost (an offset jump) or a stream that was replaced (another
/// epoch) makes the subscribers recover instead of skipping silently.
pub trait BrokerEventHandler: Send + Sync {
    /// A publication was appended to `channel` (on this node or another).
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: &StreamPosition,
    );
    /// A client joined `channel`.
    fn handle_join(&self, channel: &str, info: &ClientInfo);
    /// A client left `channel`.
    fn handle_leave(&self, channel: &str, info: &ClientInfo);
}

/// Moves channel events between nodes and keeps history streams.
///
/// Contracts every implementation keeps (the conformance suite checks them):
/// - **Append and deliver are atomic per channel.** A publication's history append (its
///   offset is the previous one plus one) and its hand-off for delivery happen as one step
///   per channel, so that every node sees a channel's publications in offset order (a
///   Redis engine does both in one Lua script; the memory engine holds the stream's lock
///   across both). A broker that cannot must say so, and its caller must serialise
///   publishes per channel.
/// - **`subscribe` returns only once delivery is live**: every publication appended after
///   it returns reaches the handler (unless lost, below). The node relies on it: it reads
///   a new subscriber's stream position after the subscribe, under a per-channel lock, so
///   nothing falls between the position and the first delivery.
/// - **Delivery between nodes is at most once** (PUB/SUB can lose messages, on a reconnect
///   for instance); it is never duplicated out of order. **Gaps are detected by the node**,
///   not the broker: an offset jump or another epoch among a channel's deliveries makes the
///   affected subscribers recover, and a periodic check of idle subscriptions against the
///   stream top (`client.channel_position_check_delay`) finds a lost last publication.
///   Clients close gaps through recovery with the (offset, epoch) positions this trait
///   returns.
/// - **Epochs**: an absent stream has an epoch that stays stable while it is read (a
///   client may subscribe before the first publication); a stream that is lost (expired,
///   removed, flushed, a store restarted without persistence) comes back with a new one.
/// - Calls for different channels may run concurrently; the handler's calls for one
///   channel never do.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Registers the handler that receives every event for channels this node subscribed to.
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>);
    /// Starts delivering `channel`'s events to this node; returns once delivery is live.
    /// Idempotent. The node calls it for a channel's first local subscriber, never
    /// concurrently with [`Broker::unsubscribe`] for the same channel.
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// Stops delivering `channel`'s events to this node. Idempotent. Called when the
    /// channel's last local subscriber left.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// Whether every publication reaches every subscribed node (true for the single
    /// process memory engine): the node then skips the periodic position checks. Default:
    /// false, the safe answer for any networked broker.
    fn reliable_delivery(&self) -> bool {
        false
    }
    /// Appends to history (atomically per channel: offsets rise by exactly one) and hands
    /// the publication over for delivery, as one step per channel (see the trait docs).
    /// Returns the publication's position; offset 0 when `opts.history_size` is 0.
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, EngineError>;
    /// Delivers a join event.
    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError>;
    /// Delivers a leave event.
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError>;
    /// Reads a history stream. An epoch in `filter.since` that does not match returns no
    /// publications and the current position, so the caller can tell the gap is lost.
    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError>;
    /// Drops a channel's publications; the next publication starts a new epoch.
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError>;
}

/// Who is in a channel right now.
#[async_trait]
pub trait PresenceManager: Send + Sync {
    /// Adds or refreshes a client's presence; it expires after `ttl` unless refreshed.
    async fn add(&self, channel: &str, info: &ClientInfo, ttl: Duration)
    -> Result<(), EngineError>;
    /// Removes a client's presence.
    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError>;
    /// Every client present, by client id.
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError>;
    /// Number of clients and of distinct users present.
    async fn stats(&self, channel: &str) -> Result<(u32, u32), EngineError>;
}

/// Background work an engine owns (expiry sweeps, connections, PUB/SUB readers).
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// Starts the background work; called once, inside a tokio runtime. Tasks should hold
    /// the part weakly, so that dropping the engine ends them too.
    fn start(self: Arc<Self>);
    /// Stops the background work and releases what it holds. Called once, after the
    /// server drained its clients; the engine is not used afterwards.
    async fn close(&self);
}

/// A broker, a presence manager and a controller, with the background work behind them.
#[derive(Clone)]
pub struct Engine {
    /// Channel events between nodes and history streams.
    pub broker: Arc<dyn Broker>,
    /// Who is in which channel.
    pub presence: Arc<dyn PresenceManager>,
    /// Commands between nodes; [`control::MemoryController`] unless
    /// [`Engine::with_control`] set another.
    pub control: Arc<dyn control::Controller>,
    /// Started by [`Engine::start`], stopped by [`Engine::close`].
    parts: Vec<Arc<dyn Lifecycle>>,
    /// The Redis engine's connection metrics, for the node to register and export.
    pub redis_metrics: Option<crate::metrics::RedisMetrics>,
}

impl Engine {
    /// The engine `config.type` names (connections are made by [`Engine::start`] or lazily,
    /// never here, so that building a node needs no runtime).
    pub fn build(config: &crate::config::EngineConfig) -> Result<Engine, EngineError> {
        match config.kind {
            crate::config::EngineType::Memory => Ok(Engine::memory()),
            crate::config::EngineType::Redis => redis::build(&config.redis),
        }
    }

    /// The single-process engine.
    pub fn memory() -> Engine {
        let broker = Arc::new(memory::MemoryBroker::new());
        let presence = Arc::new(memory::MemoryPresence::new());
        Engine::new(
            broker.clone(),
            presence.clone(),
            vec![broker as Arc<dyn Lifecycle>, presence],
        )
    }

    /// An engine from its parts, with the single-process controller; `parts` are started
    /// and closed with it.
    pub fn new(
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceManager>,
        parts: Vec<Arc<dyn Lifecycle>>,
    ) -> Engine {
        Engine {
            broker,
            presence,
            control: Arc::new(control::MemoryController::new()),
            parts,
            redis_metrics: None,
        }
    }

    /// The same engine exporting `metrics` through the node.
    pub fn with_redis_metrics(mut self, metrics: crate::metrics::RedisMetrics) -> Engine {
        self.redis_metrics = Some(metrics);
        self
    }

    /// The same engine with another controller (a networked engine's); `part`, when
    /// given, is started and closed with the others.
    pub fn with_control(
        mut self,
        control: Arc<dyn control::Controller>,
        part: Option<Arc<dyn Lifecycle>>,
    ) -> Engine {
        self.control = control;
        self.parts.extend(part);
        self
    }

    /// Starts the background work of every part.
    pub fn start(&self) {
        for p in &self.parts {
            p.clone().start();
        }
    }

    /// Stops the background work of every part.
    pub async fn close(&self) {
        for p in &self.parts {
            p.close().await;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl ClientInfo {
    /// The wire form.
    pub fn to_proto(&self) -> crate::protocol::proto::ClientInfo {
        crate::protocol::proto::ClientInfo {
            user: self.user.clone(),
            client: self.client.clone(),
            conn_info: self.conn_info.clone(),
            chan_info: self.chan_info.clone(),
        }
    }
}

impl Publication {
    /// The wire form; `data` is shared, not copied.
    pub fn to_proto(&self) -> crate::protocol::proto::Publication {
        crate::protocol::proto::Publication {
            data: self.data.clone(),
            info: self.info.as_ref().map(ClientInfo::to_proto),
            offset: self.offset,
            tags: self.tags.clone(),
            ..Default::default()
        }
    }
}
