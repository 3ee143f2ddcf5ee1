//! The node: the composition root. It owns the hub, the engine, the token verifiers and
//! the configuration, and offers the server-side operations that the API, the console and
//! sessions call (publish, history, presence, disconnect a user, emulation frames, ...).
//! It receives the broker's events and hands them to the hub, and applies the control
//! messages other nodes (and itself) send through the engine's controller.
//!
//! Operations on users' sessions go through the controller, never straight to the hub:
//! the sessions may be on any node. The node keeps a registry of the live nodes from
//! their announcements, for `info` and for routing emulation frames. Questions whose answer
//! is spread over the nodes (`channels`, the console's connections, whether a forwarded
//! emulation frame found its session) are surveys: asked through the controller, answered
//! by every live node, gathered with a timeout ([`Node::survey`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::auth::TokenVerifier;
use crate::config::{ChannelOptions, Config};
use crate::engine::control::{
    ControlCommand, ControlHandler, ControlMessage, SurveyAnswer, SurveyQuery, Surveys,
};
use crate::engine::{
    BrokerEventHandler, ClientInfo, Engine, EngineError, HistoryFilter, HistoryResult, Publication,
    PublishOptions, StreamPosition,
};
use crate::error::{ClientError, Disconnect};
use crate::hub::{Control, Hub};
use crate::metrics::{GapLabel, Metrics};

pub use crate::engine::control::NodeInfo;

/// Shards of the per-channel subscribe lock. Channels that share a shard wait for each
/// other's broker subscribe or unsubscribe (one round trip to a remote broker); 1024 keeps
/// that rare while the locks take about 40 KiB.
const SUB_LOCK_SHARDS: usize = 1024;

/// How often a node announces itself (with its counts) to the others.
const NODE_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(3);

/// How long a node stays in the registry after its last announcement: two missed
/// announcements and a second of slack.
const NODE_TTL: Duration = Duration::from_secs(7);

/// How long a survey waits for the answers of the nodes it asked (Centrifugo waits 10 s).
/// A node that died keeps its place in the registry for up to `NODE_TTL`; a survey
/// asking it in that window fails after this long.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(5);

/// Failure of a server-side operation, mapped to a client error code at the edges.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The channel's namespace does not exist.
    #[error("unknown channel")]
    UnknownChannel,
    /// The feature is off for the channel's namespace (history, presence).
    #[error("not available")]
    NotAvailable,
    /// A `since` position whose epoch does not match the stream.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// Invalid arguments.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Some nodes asked in a survey did not answer in time.
    #[error("{missing} of {asked} nodes did not answer within {SURVEY_TIMEOUT:?}")]
    SurveyTimeout {
        /// Nodes that did not answer.
        missing: usize,
        /// Nodes asked.
        asked: usize,
    },
}

impl From<NodeError> for ClientError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::UnknownChannel => ClientError::UNKNOWN_CHANNEL,
            NodeError::NotAvailable => ClientError::NOT_AVAILABLE,
            NodeError::UnrecoverablePosition => ClientError::UNRECOVERABLE_POSITION,
            NodeError::BadRequest(m) => ClientError::BAD_REQUEST.with_message(m),
            NodeError::Engine(_) | NodeError::SurveyTimeout { .. } => ClientError::INTERNAL,
        }
    }
}

/// Error raised while building a node from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The token configuration is unusable (bad PEM key, ...).
    #[error("client.token: {0}")]
    Token(String),
    /// The subscription token configuration is unusable.
    #[error("client.subscription_token: {0}")]
    SubscriptionToken(String),
    /// The engine cannot be built from `engine.*`.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
}

/// What became of commands posted to `/emulation` ([`Node::emulation`]), whichever node
/// they were posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulation {
    /// Handed to the session, on the node that holds it.
    Delivered,
    /// The node named has no such session (any more).
    SessionGone,
    /// No live node has that id (the client reconnects).
    UnknownNode,
}

/// The composition root of one Herald process.
pub struct Node {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Local registry and fan-out.
    pub hub: Arc<Hub>,
    /// Verifies connection tokens.
    pub verifier: TokenVerifier,
    /// Verifies subscription tokens.
    pub sub_verifier: TokenVerifier,
    /// Calls to the application's backend (proxy hooks).
    pub proxies: crate::proxy::Proxies,
    /// New connects allowed per second on this node (`client.connection_rate_limit`).
    pub connect_rate: parking_lot::Mutex<crate::rate::TokenBucket>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Broker and presence; started by [`Node::start`], closed by [`Node::close`].
    engine: Engine,
    /// Per-channel (sharded) lock held across a hub change and the broker call it implies,
    /// so that the node's broker subscription is live whenever the hub has a subscriber
    /// (see [`Node::hub_subscribe`]). A tokio mutex: the broker call is awaited under it.
    sub_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Other live nodes by uid, with when each last announced itself.
    nodes: Mutex<HashMap<String, (NodeInfo, Instant)>>,
    /// Surveys this node asked and waits on.
    surveys: Surveys,
    uid: String,
    started: Instant,
    shutdown: CancellationToken,
}

/// Hands broker events to the hub (kept apart from the node so the broker holds no cycle).
struct HubHandler {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

/// Hands control messages to the node, which it holds weakly: the controller belongs to the
/// node's engine, so a strong reference would be a cycle.
struct ControlReceiver {
    node: Weak<Node>,
}

impl ControlHandler for ControlReceiver {
    fn handle_control(&self, message: ControlMessage) {
        if let Some(node) = self.node.upgrade() {
            node.apply_control(message);
        }
    }
}

impl BrokerEventHandler for HubHandler {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: &StreamPosition,
    ) {
        let fanout = self
            .hub
            .broadcast_publication(channel, &publication, &position.epoch);
        self.metrics.deliveries.inc_by(fanout.delivered as u64);
        self.metrics.gaps_detected(&GapLabel::DELIVERY, fanout.gaps);
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.hub.broadcast_presence_event(channel, info, true);
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.hub.broadcast_presence_event(channel, info, false);
    }
}

impl Node {
    /// A node with the engine `config.engine` names.
    pub fn new(config: Config) -> Result<Arc<Node>, StartError> {
        let engine = Engine::build(&config.engine)?;
        Self::with_engine(config, engine)
    }

    /// A node on `engine` (tests wrap an engine to slow or fail it).
    pub fn with_engine(config: Config, engine: Engine) -> Result<Arc<Node>, StartError> {
        let verifier = TokenVerifier::new(&config.client.token)
            .map_err(|e| StartError::Token(e.to_string()))?;
        let sub_verifier = if config.client.subscription_token.enabled {
            TokenVerifier::new(&config.client.subscription_token.token_config())
                .map_err(|e| StartError::SubscriptionToken(e.to_string()))?
        } else {
            verifier.clone()
        };
        let hub = Arc::new(Hub::new());
        let mut metrics = Metrics::new();
        if let Some(redis) = &engine.redis_metrics {
            metrics.register_redis(redis);
        }
        let metrics = Arc::new(metrics);
        engine.broker.register_handler(Arc::new(HubHandler {
            hub: hub.clone(),
            metrics: metrics.clone(),
        }));
        Ok(Arc::new_cyclic(|node| {
            engine
                .control
                .register_handler(Arc::new(ControlReceiver { node: node.clone() }));
            Node {
                proxies: crate::proxy::Proxies::new(&config),
                connect_rate: parking_lot::Mutex::new(crate::rate::TokenBucket::new(
                    f64::from(config.client.connection_rate_limit),
                    f64::from(config.client.connection_rate_limit),
                )),
                config: Arc::new(config),
                hub,
                verifier,
                sub_verifier,
                metrics,
                engine,
                sub_locks: (0..SUB_LOCK_SHARDS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                nodes: Mutex::new(HashMap::new()),
                surveys: Surveys::default(),
                uid: uuid::Uuid::new_v4().to_string(),
                started: Instant::now(),
                shutdown: CancellationToken::new(),
            }
        }))
    }

    /// This process's unique id.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Starts the engine's background work, the gauges' refresh and the node's
    /// announcements to the others (until shutdown).
    pub fn start(self: &Arc<Self>) {
        self.engine.start();
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = node.shutdown.cancelled() => return,
                    _ = tick.tick() => node.metrics.update_gauges(&node.hub),
                }
            }
        });
        let node = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(NODE_ANNOUNCE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => match node.upgrade() {
                        Some(node) => node.announce(None).await,
                        None => return,
                    },
                }
            }
        });
    }

    /// Sends this node's info to every node (`to: None`) or to one.
    async fn announce(&self, to: Option<String>) {
        let message = ControlMessage {
            from: self.uid.clone(),
            to,
            command: ControlCommand::Node(self.info()),
        };
        if let Err(e) = self.engine.control.publish(message).await {
            tracing::warn!(error = %e, "node announcement failed");
        }
    }

    /// Sends a command to every node, this one included.
    async fn broadcast_control(&self, command: ControlCommand) -> Result<(), NodeError> {
        let message = ControlMessage {
            from: self.uid.clone(),
            to: None,
            command,
        };
        Ok(self.engine.control.publish(message).await?)
    }

    /// Applies a control message on this node (see [`ControlHandler`]); never blocks.
    fn apply_control(self: Arc<Self>, message: ControlMessage) {
        if message.to.as_deref().is_some_and(|to| to != self.uid) {
            return;
        }
        match message.command {
            ControlCommand::Disconnect {
                user,
                client,
                whitelist,
                code,
                reason,
            } => {
                let disconnect = Disconnect::custom(code, reason);
                for c in self.local_sessions(&user, client.as_deref()) {
                    if !whitelist.contains(&c.client) {
                        c.queue.close(disconnect.clone());
                    }
                }
            }
            ControlCommand::Subscribe {
                user,
                client,
                channel,
            } => self.control_local(&user, client.as_deref(), Control::Subscribe { channel }),
            ControlCommand::Unsubscribe {
                user,
                client,
                channel,
            } => self.control_local(&user, client.as_deref(), Control::Unsubscribe { channel }),
            ControlCommand::Refresh {
                user,
                client,
                expire_at,
                expired,
            } => self.control_local(
                &user,
                client.as_deref(),
                Control::Refresh { expire_at, expired },
            ),
            ControlCommand::Survey { id, query } => {
                if message.from == self.uid {
                    return; // answered in place by `survey`
                }
                tokio::spawn(async move {
                    let answer = self.answer(query).await;
                    let reply = ControlMessage {
                        from: self.uid.clone(),
                        to: Some(message.from),
                        command: ControlCommand::SurveyReply { id, answer },
                    };
                    if let Err(e) = self.engine.control.publish(reply).await {
                        tracing::warn!(error = %e, "survey reply failed");
                    }
                });
            }
            ControlCommand::SurveyReply { id, answer } => {
                self.surveys.answer(id, message.from, answer);
            }
            ControlCommand::Node(info) => {
                if info.uid == self.uid {
                    return;
                }
                let uid = info.uid.clone();
                let known = self
                    .nodes
                    .lock()
                    .insert(uid.clone(), (info, Instant::now()))
                    .is_some_and(|(_, seen)| seen.elapsed() < NODE_TTL);
                if !known {
                    // A node we did not know: tell it about us now rather than at our
                    // next announcement, so that its `info` is complete at once.
                    tokio::spawn(async move { self.announce(Some(uid)).await });
                }
            }
        }
    }

    /// This node's sessions of `user` (only the one with client id `client`, when set).
    fn local_sessions(
        &self,
        user: &str,
        client: Option<&str>,
    ) -> impl Iterator<Item = Arc<crate::hub::ClientHandle>> {
        let client = client.map(str::to_string);
        self.hub
            .user_clients(user)
            .into_iter()
            .filter(move |c| client.as_deref().is_none_or(|id| id == c.client))
    }

    fn control_local(&self, user: &str, client: Option<&str>, msg: Control) {
        for c in self.local_sessions(user, client) {
            c.control(msg.clone());
        }
    }

    /// Closes the engine; called once the clients are drained.
    pub async fn close(&self) {
        self.engine.close().await;
    }

    /// The options of a channel's namespace.
    pub fn channel_options(&self, channel: &str) -> Result<&ChannelOptions, NodeError> {
        if channel.is_empty() {
            return Err(NodeError::BadRequest("channel required".into()));
        }
        if channel.len() > self.config.channel.max_length {
            return Err(NodeError::BadRequest(format!(
                "channel longer than channel.max_length ({})",
                self.config.channel.max_length
            )));
        }
        self.config
            .channel_options(channel)
            .ok_or(NodeError::UnknownChannel)
    }

    fn publish_options(&self, opts: &ChannelOptions) -> PublishOptions {
        PublishOptions {
            history_size: opts.history_size,
            history_ttl: opts.history_ttl,
            history_meta_ttl: self.config.channel.effective_history_meta_ttl(opts),
        }
    }

    /// Publishes to a channel: appends to its history when the namespace keeps one and
    /// delivers to every subscriber on every node.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
        tags: std::collections::HashMap<String, String>,
        skip_history: bool,
    ) -> Result<StreamPosition, NodeError> {
        let opts = self.channel_options(channel)?;
        let mut popts = self.publish_options(opts);
        if skip_history {
            popts.history_size = 0;
        }
        let started = Instant::now();
        let publication = Publication {
            data,
            info,
            tags,
            ..Default::default()
        };
        let position = self
            .engine
            .broker
            .publish(channel, publication, &popts)
            .await?;
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        self.metrics.publications.inc();
        Ok(position)
    }

    /// Reads a channel's history.
    pub async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, NodeError> {
        let opts = self.channel_options(channel)?;
        if opts.history_size == 0 || opts.history_ttl.is_zero() {
            return Err(NodeError::NotAvailable);
        }
        let result = self.engine.broker.history(channel, filter).await?;
        if let Some(since) = &filter.since
            && since.epoch != result.position.epoch
            && !since.epoch.is_empty()
        {
            return Err(NodeError::UnrecoverablePosition);
        }
        Ok(result)
    }

    /// Reads history for recovery: no epoch check (the caller compares positions).
    pub async fn recovery_history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, NodeError> {
        Ok(self.engine.broker.history(channel, filter).await?)
    }

    /// Drops a channel's history.
    pub async fn remove_history(&self, channel: &str) -> Result<(), NodeError> {
        self.channel_options(channel)?;
        Ok(self.engine.broker.remove_history(channel).await?)
    }

    /// Who is in a channel.
    pub async fn presence(
        &self,
        channel: &str,
    ) -> Result<std::collections::HashMap<String, ClientInfo>, NodeError> {
        if !self.channel_options(channel)?.presence {
            return Err(NodeError::NotAvailable);
        }
        Ok(self.engine.presence.presence(channel).await?)
    }

    /// Number of clients and users in a channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<(u32, u32), NodeError> {
        if !self.channel_options(channel)?.presence {
            return Err(NodeError::NotAvailable);
        }
        Ok(self.engine.presence.stats(channel).await?)
    }

    fn sub_lock(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut h);
        &self.sub_locks[(h.finish() as usize) % self.sub_locks.len()]
    }

    /// Adds a subscriber to the hub and, when it is the first here, the node to the broker.
    /// Returns the subscription's generation (see [`crate::hub::Control::InsufficientState`]).
    ///
    /// Both happen under the channel's subscribe lock, so a second subscriber cannot
    /// become active (read its position, get its reply) before the node's broker
    /// subscription is live, which would lose the publications in between; and a last
    /// subscriber leaving ([`Node::hub_unsubscribe`]) cannot unsubscribe the node after a
    /// new first subscriber subscribed it.
    pub(crate) async fn hub_subscribe(
        &self,
        channel: &str,
        client: &Arc<crate::hub::ClientHandle>,
        join_leave: bool,
    ) -> Result<u64, NodeError> {
        let _guard = self.sub_lock(channel).lock().await;
        let added = self.hub.add_subscriber(channel, client, join_leave);
        if added.first
            && let Err(e) = self.engine.broker.subscribe(channel).await
        {
            self.hub.remove_subscriber(channel, client);
            return Err(e.into());
        }
        Ok(added.generation)
    }

    /// Whether sessions should check their positioned subscriptions against the stream
    /// tops: `client.channel_position_check_delay` is set and the broker may lose
    /// deliveries (see [`crate::engine::Broker::reliable_delivery`]).
    pub(crate) fn position_checks(&self) -> bool {
        !self.config.client.channel_position_check_delay.is_zero()
            && !self.engine.broker.reliable_delivery()
    }

    /// Checks a positioned subscription against its stream's top. Returns the
    /// subscription's generation when the client is behind (a publication lost on its way
    /// to this node that no later one revealed) or the stream has another epoch: the
    /// session must make it recover. A subscription that received a publication since the
    /// last check is not checked (the deliveries check it), nor is anything when the
    /// broker cannot answer (checked again next time).
    pub(crate) async fn check_position(
        &self,
        channel: &str,
        client: &crate::hub::ClientHandle,
    ) -> Option<u64> {
        let probe = self.hub.probe(channel, client)?;
        if probe.fresh {
            return None;
        }
        let filter = HistoryFilter {
            limit: Some(0),
            ..Default::default()
        };
        let top = match self.engine.broker.history(channel, &filter).await {
            Ok(h) => h.position,
            Err(e) => {
                tracing::debug!(channel, error = %e, "position check: stream top unavailable");
                return None;
            }
        };
        let covers = |p: &StreamPosition| p.epoch == top.epoch && p.offset >= top.offset;
        if covers(&probe.position) {
            return None;
        }
        // A delivery may have landed while the top was read: look again.
        let again = self.hub.probe(channel, client)?;
        if again.generation != probe.generation || covers(&again.position) {
            return None;
        }
        self.metrics.gap_detected(GapLabel::POSITION_CHECK);
        Some(probe.generation)
    }

    /// Removes a subscriber; the last one here takes the node out of the broker's channel.
    /// Under the channel's subscribe lock: the hub's emptiness, checked by the removal,
    /// holds until the broker unsubscribe is done (see [`Node::hub_subscribe`]).
    pub(crate) async fn hub_unsubscribe(&self, channel: &str, client: &crate::hub::ClientHandle) {
        let _guard = self.sub_lock(channel).lock().await;
        if self.hub.remove_subscriber(channel, client)
            && let Err(e) = self.engine.broker.unsubscribe(channel).await
        {
            // The node stays subscribed with nobody to deliver to: harmless, and the next
            // first subscriber subscribes again (subscribe is idempotent).
            tracing::warn!(channel, error = %e, "broker unsubscribe failed");
        }
    }

    pub(crate) async fn add_presence(&self, channel: &str, info: &ClientInfo) {
        // Lives `presence_ttl` unless the session refreshes it (every
        // `client.presence_update_interval`, which validation keeps shorter).
        let ttl = self.config.engine.presence_ttl();
        if let Err(e) = self.engine.presence.add(channel, info, ttl).await {
            tracing::warn!(channel, error = %e, "presence add failed");
        }
    }

    pub(crate) async fn remove_presence(&self, channel: &str, client: &str) {
        if let Err(e) = self.engine.presence.remove(channel, client).await {
            tracing::warn!(channel, error = %e, "presence remove failed");
        }
    }

    pub(crate) async fn publish_join(&self, channel: &str, info: &ClientInfo) {
        if let Err(e) = self.engine.broker.publish_join(channel, info).await {
            tracing::warn!(channel, error = %e, "join publish failed");
        }
    }

    pub(crate) async fn publish_leave(&self, channel: &str, info: &ClientInfo) {
        if let Err(e) = self.engine.broker.publish_leave(channel, info).await {
            tracing::warn!(channel, error = %e, "leave publish failed");
        }
    }

    /// Subscribes the sessions of `user` (all, or the one `client`), on every node, to
    /// `channel`, whose namespace must exist. Returns once the command is sent.
    pub async fn subscribe_user(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
    ) -> Result<(), NodeError> {
        self.channel_options(channel)?;
        self.broadcast_control(ControlCommand::Subscribe {
            user: user.to_string(),
            client: client.map(str::to_string),
            channel: channel.to_string(),
        })
        .await
    }

    /// Ends the subscriptions of `user`'s sessions (all, or the one `client`), on every
    /// node, to `channel`.
    pub async fn unsubscribe_user(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
    ) -> Result<(), NodeError> {
        self.broadcast_control(ControlCommand::Unsubscribe {
            user: user.to_string(),
            client: client.map(str::to_string),
            channel: channel.to_string(),
        })
        .await
    }

    /// Closes the connections of `user` (all, or the one `client`), on every node, except
    /// the client ids in `whitelist`.
    pub async fn disconnect_user(
        &self,
        user: &str,
        client: Option<&str>,
        whitelist: &[String],
        disconnect: &Disconnect,
    ) -> Result<(), NodeError> {
        self.broadcast_control(ControlCommand::Disconnect {
            user: user.to_string(),
            client: client.map(str::to_string),
            whitelist: whitelist.to_vec(),
            code: disconnect.code,
            reason: disconnect.reason.to_string(),
        })
        .await
    }

    /// Changes the expiry of `user`'s connections (all, or the one `client`), on every
    /// node: `expire_at` in Unix seconds (`None`: never), or now when `expired`.
    pub async fn refresh_user(
        &self,
        user: &str,
        client: Option<&str>,
        expire_at: Option<i64>,
        expired: bool,
    ) -> Result<(), NodeError> {
        self.broadcast_control(ControlCommand::Refresh {
            user: user.to_string(),
            client: client.map(str::to_string),
            expire_at,
            expired,
        })
        .await
    }

    /// Hands commands posted to `/emulation` to the session they are for: on this node
    /// directly (waiting for room in its inbox), on another live node through a survey of
    /// that node, which answers once its session took them (or has no such session). The
    /// answer does not depend on which node the request reached, and a client's requests
    /// reach its session in the order they were answered.
    pub async fn emulation(
        &self,
        node: &str,
        session: &str,
        data: Bytes,
    ) -> Result<Emulation, NodeError> {
        if node == self.uid {
            return Ok(self.emulate_here(session, data).await);
        }
        if !self.is_live(node) {
            return Ok(Emulation::UnknownNode);
        }
        let query = SurveyQuery::Emulation {
            session: session.to_string(),
            data,
        };
        let answers = self.survey(Some(node), query).await?;
        Ok(match answers.get(node) {
            Some(SurveyAnswer::Emulation { delivered: true }) => Emulation::Delivered,
            _ => Emulation::SessionGone,
        })
    }

    async fn emulate_here(&self, session: &str, data: Bytes) -> Emulation {
        match self.hub.session(session) {
            Some(c) if c.send_frame(data).await => Emulation::Delivered,
            _ => Emulation::SessionGone,
        }
    }

    /// Asks every live node (`to: None`, this one included) or the one node `to` a
    /// question, and gathers their answers by node uid. Fails with
    /// [`NodeError::SurveyTimeout`] when a node asked has not answered within
    /// [`SURVEY_TIMEOUT`] (as Centrifugo's surveys do), or when the question cannot be sent.
    /// Nodes are the ones the registry holds when the survey starts; a node that started
    /// since and answers anyway is counted too.
    pub async fn survey(
        &self,
        to: Option<&str>,
        query: SurveyQuery,
    ) -> Result<HashMap<String, SurveyAnswer>, NodeError> {
        let asked: HashSet<String> = match to {
            Some(uid) => HashSet::from([uid.to_string()]),
            None => self.live_uids(),
        };
        let mut answers = HashMap::with_capacity(asked.len() + 1);
        if to.is_none() {
            answers.insert(self.uid.clone(), self.answer(query.clone()).await);
        }
        if asked.is_empty() {
            return Ok(answers);
        }
        let mut survey = self.surveys.open(asked.len());
        let message = ControlMessage {
            from: self.uid.clone(),
            to: to.map(str::to_string),
            command: ControlCommand::Survey {
                id: survey.id,
                query,
            },
        };
        self.engine.control.publish(message).await?;
        let deadline = tokio::time::Instant::now() + SURVEY_TIMEOUT;
        while !asked.iter().all(|uid| answers.contains_key(uid)) {
            match tokio::time::timeout_at(deadline, survey.answers.recv()).await {
                Ok(Some((from, answer))) => {
                    answers.insert(from, answer);
                }
                Ok(None) | Err(_) => {
                    let missing = asked.iter().filter(|u| !answers.contains_key(*u)).count();
                    tracing::warn!(missing, asked = asked.len(), "survey timed out");
                    return Err(NodeError::SurveyTimeout {
                        missing,
                        asked: asked.len(),
                    });
                }
            }
        }
        Ok(answers)
    }

    /// This node's answer to a survey.
    async fn answer(&self, query: SurveyQuery) -> SurveyAnswer {
        match query {
            SurveyQuery::Channels { pattern } => SurveyAnswer::Channels {
                channels: self
                    .local_channels()
                    .into_iter()
                    .filter(|(name, n)| {
                        *n > 0 && (pattern.is_empty() || crate::glob::matches(&pattern, name))
                    })
                    .map(|(name, n)| (name, u32::try_from(n).unwrap_or(u32::MAX)))
                    .collect(),
            },
            SurveyQuery::Connections => SurveyAnswer::Connections {
                clients: self.local_connections(),
            },
            SurveyQuery::Emulation { session, data } => SurveyAnswer::Emulation {
                delivered: self.emulate_here(&session, data).await == Emulation::Delivered,
            },
        }
    }

    /// The uids of the other nodes that announced themselves recently.
    fn live_uids(&self) -> HashSet<String> {
        self.nodes
            .lock()
            .iter()
            .filter(|(_, (_, seen))| seen.elapsed() < NODE_TTL)
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    /// Whether another node with this uid announced itself recently.
    fn is_live(&self, uid: &str) -> bool {
        self.nodes
            .lock()
            .get(uid)
            .is_some_and(|(_, seen)| seen.elapsed() < NODE_TTL)
    }

    /// Every live node: this one first, then the others that announced themselves
    /// recently, by name and uid.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut others: Vec<NodeInfo> = {
            let mut nodes = self.nodes.lock();
            nodes.retain(|_, (_, seen)| seen.elapsed() < NODE_TTL);
            nodes.values().map(|(info, _)| info.clone()).collect()
        };
        others.sort_by(|a, b| (&a.name, &a.uid).cmp(&(&b.name, &b.uid)));
        let mut all = vec![self.info()];
        all.extend(others);
        all
    }

    /// Channels with subscribers on this node, with their subscriber counts.
    pub fn local_channels(&self) -> Vec<(String, usize)> {
        self.hub.channels()
    }

    /// Channels with subscribers on any live node whose names match `pattern` (a glob
    /// with `*`; empty: all), with their subscribers summed over the nodes (a survey; see
    /// [`Node::survey`]).
    pub async fn channels(&self, pattern: &str) -> Result<BTreeMap<String, u32>, NodeError> {
        let query = SurveyQuery::Channels {
            pattern: pattern.to_string(),
        };
        let mut all = BTreeMap::new();
        for answer in self.survey(None, query).await?.into_values() {
            if let SurveyAnswer::Channels { channels } = answer {
                for (name, n) in channels {
                    let sum: &mut u32 = all.entry(name).or_default();
                    *sum = sum.saturating_add(n);
                }
            }
        }
        Ok(all)
    }

    /// The connected clients of every live node, as (user, client id) (a survey).
    pub async fn connections(&self) -> Result<Vec<(String, String)>, NodeError> {
        let mut all = Vec::new();
        for answer in self
            .survey(None, SurveyQuery::Connections)
            .await?
            .into_values()
        {
            if let SurveyAnswer::Connections { clients } = answer {
                all.extend(clients);
            }
        }
        Ok(all)
    }

    /// This node's connected clients, as (user, client id).
    pub fn local_connections(&self) -> Vec<(String, String)> {
        self.hub
            .all_clients()
            .iter()
            .map(|c| (c.user(), c.client.clone()))
            .collect()
    }

    /// How many connections `user` has on this node.
    pub fn user_connections(&self, user: &str) -> usize {
        self.hub.user_clients(user).len()
    }

    /// Counts for this node.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            uid: self.uid.clone(),
            name: self.config.node.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            num_clients: self.hub.num_clients(),
            num_users: self.hub.num_users(),
            num_channels: self.hub.num_channels(),
            num_subs: self.hub.num_subscriptions(),
            uptime: self.started.elapsed().as_secs(),
        }
    }

    /// Resolves when shutdown begins.
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Begins shutdown: new connects are refused and every client is told to reconnect
    /// (disconnect 3001), spread evenly over `spread` in a random order so that they arrive
    /// at the other nodes over that window instead of all at once. Clients not told yet are
    /// served meanwhile. Returns once every client was told.
    pub async fn shutdown(&self, spread: Duration) {
        self.shutdown.cancel();
        let mut clients = self.hub.all_clients();
        rand::seq::SliceRandom::shuffle(&mut clients[..], &mut rand::rng());
        // At most this many waits: finer steps than ~20 ms buy nothing.
        let steps = clients
            .len()
            .clamp(1, (spread.as_millis() / 20).max(1) as usize);
        let per_step = clients.len().div_ceil(steps).max(1);
        let pause = spread / steps as u32;
        for (i, chunk) in clients.chunks(per_step).enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            for c in chunk {
                c.queue.close(Disconnect::SHUTDOWN);
            }
        }
    }
}
