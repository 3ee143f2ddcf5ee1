//! One client connection's state machine, independent of sockets: it turns commands into
//! replies and hub subscriptions, keeps the connection alive with pings, enforces token
//! expiry and cleans up when the connection ends.
//!
//! A transport adapter creates a [`Session`], feeds it frames (or decoded commands) and
//! drains [`ClientHandle::queue`] to its socket. Replies and pushes all go through that one
//! queue, so their order on the wire is the order in which the session produced them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::auth::TokenError;
use crate::config::ChannelOptions;
use crate::engine::{ClientInfo, HistoryFilter, StreamPosition, now_millis};
use crate::error::{ClientError, Disconnect, unsubscribe};
use crate::hub::{ClientHandle, Control, PositionTag, Tags};
use crate::metrics::{CodeLabel, GapLabel, MethodLabel, TransportLabel};
use crate::node::Node;
use crate::protocol::Encoding;
use crate::protocol::proto::{self, Command, Reply};

/// What a transport tells the session about itself.
#[derive(Clone, Copy, Debug)]
pub struct TransportInfo {
    /// Name used in metrics and logs.
    pub name: &'static str,
    /// Encoding of every message on this connection.
    pub encoding: Encoding,
    /// Server-to-client only: no pongs expected, commands come from the connect request.
    pub unidirectional: bool,
    /// Client-to-server commands arrive through the emulation endpoint, addressed by the
    /// session id given in the connect result.
    pub emulation: bool,
    /// The transport writes each event's stream position beside it (uni SSE `id:`), so
    /// recovered publications go out as separate pushes rather than inside the connect
    /// reply.
    pub positions_in_stream: bool,
}

#[derive(Debug, Clone)]
struct SubState {
    presence: bool,
    join_leave: bool,
    /// The client follows the stream's positions (offset, epoch): its position is
    /// checked periodically against the stream top.
    positioned: bool,
    /// Made by the server (connection token, unidirectional connect, server API) rather
    /// than by a subscribe command: the client cannot resubscribe it alone, so losing its
    /// state closes the connection (3010) instead of unsubscribing with 2500.
    server_side: bool,
    /// The hub subscription's generation (see [`Control::InsufficientState`]).
    generation: u64,
    chan_info: Bytes,
    /// When the subscription token runs out (plus `client.expired_close_delay`) unless
    /// the client refreshes it with sub_refresh.
    expire_deadline: Option<Instant>,
}

/// What a transport feeds a running session: frames to decode, or commands its framing
/// already decoded.
enum Inbound {
    Frame(Bytes),
    Command(Box<Command>),
}

/// Channel operations whose permission the namespace options decide.
#[derive(Clone, Copy)]
enum Operation {
    Publish,
    Presence,
    History,
}

/// An error while handling one command: an error reply, or the end of the connection.
enum Failure {
    Reply(ClientError),
    Close(Disconnect),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Reply(e)
    }
}

impl From<crate::node::NodeError> for Failure {
    fn from(e: crate::node::NodeError) -> Self {
        Failure::Reply(e.into())
    }
}

type Handled = Result<Option<Reply>, Failure>;

/// One connection's state.
pub struct Session {
    node: Arc<Node>,
    handle: Arc<ClientHandle>,
    transport: TransportInfo,
    connected: bool,
    resume: HashMap<String, StreamPosition>,
    session_id: String,
    user: String,
    conn_info: Bytes,
    expire_at: Option<i64>,
    expire_deadline: Option<Instant>,
    subs: HashMap<String, SubState>,
    stale_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    next_presence: Option<Instant>,
    /// When to compare positioned subscriptions with their stream tops
    /// (`client.channel_position_check_delay`); `None` when checks are off.
    next_position_check: Option<Instant>,
    pong_deadline: Option<Instant>,
}

impl Session {
    /// A new, not yet connected session with its own outbound queue.
    pub fn new(node: Arc<Node>, transport: TransportInfo) -> Session {
        let stale_close_delay = node.config.client.stale_close_delay;
        let handle = node
            .hub
            .new_client(transport.encoding, node.config.client.max_queue_size);
        node.metrics
            .connections
            .get_or_create(&TransportLabel {
                transport: transport.name,
            })
            .inc();
        Session {
            node,
            handle,
            transport,
            connected: false,
            resume: HashMap::new(),
            session_id: String::new(),
            user: String::new(),
            conn_info: Bytes::new(),
            expire_at: None,
            expire_deadline: None,
            subs: HashMap::new(),
            stale_deadline: Some(Instant::now() + stale_close_delay),
            next_ping: None,
            next_presence: None,
            next_position_check: None,
            pong_deadline: None,
        }
    }

    /// The client's handle; its queue is what the transport writes out.
    pub fn handle(&self) -> Arc<ClientHandle> {
        self.handle.clone()
    }

    /// Whether a connect command succeeded.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Drives the session until the connection ends: inbound frames, control messages
    /// from the node, pings and expiry. Cleans up and returns why it ended; the queue is
    /// closed with that reason so the writer can tell the client.
    pub async fn run<S>(self, inbound: S) -> Disconnect
    where
        S: Stream<Item = Result<Bytes, Disconnect>> + Unpin,
    {
        self.run_inbound(inbound.map(|f| f.map(Inbound::Frame)))
            .await
    }

    /// As [`Session::run`], for transports whose framing already delimits and decodes each
    /// command (gRPC: one Command per message).
    pub async fn run_commands<S>(self, inbound: S) -> Disconnect
    where
        S: Stream<Item = Result<Command, Disconnect>> + Unpin,
    {
        self.run_inbound(inbound.map(|c| c.map(|c| Inbound::Command(Box::new(c)))))
            .await
    }

    // The handlers below are boxed: awaited inline, the largest of them (connect and
    // subscribe with their engine calls) would size the state every idle connection keeps
    // for its whole life; boxed, a connection pays one short-lived allocation per command.
    async fn run_inbound<S>(mut self, mut inbound: S) -> Disconnect
    where
        S: Stream<Item = Result<Inbound, Disconnect>> + Unpin,
    {
        let reason = loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = self.handle.queue.closed() => {
                    break self.handle.queue.close_reason().unwrap_or(Disconnect::CONNECTION_CLOSED);
                }
                ctrl = self.handle.inbox.recv() => {
                    if let Err(d) = Box::pin(self.handle_control(ctrl)).await {
                        break d;
                    }
                }
                frame = inbound.next() => match frame {
                    Some(Ok(Inbound::Frame(bytes))) => {
                        if let Err(d) = Box::pin(self.handle_frame(&bytes)).await {
                            break d;
                        }
                    }
                    Some(Ok(Inbound::Command(cmd))) => {
                        self.node
                            .metrics
                            .messages_received
                            .get_or_create(&TransportLabel {
                                transport: self.transport.name,
                            })
                            .inc();
                        if let Err(d) = Box::pin(self.handle_command(*cmd)).await {
                            break d;
                        }
                    }
                    Some(Err(d)) => break d,
                    None => break Disconnect::CONNECTION_CLOSED,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if let Err(d) = Box::pin(self.on_timer()).await {
                        break d;
                    }
                }
            }
        };
        Box::pin(self.close(&reason)).await;
        reason
    }

    /// Sets when the credentials expire (Unix seconds) and so when the connection closes:
    /// `client.expired_close_delay` later, unless the client refreshes first.
    fn set_expiry(&mut self, expire_at: Option<i64>) {
        self.expire_at = expire_at;
        self.expire_deadline = self.expiry_deadline(expire_at);
    }

    /// The instant credentials expiring at `expire_at` (Unix seconds) close what they
    /// protect: `client.expired_close_delay` later, unless refreshed first.
    fn expiry_deadline(&self, expire_at: Option<i64>) -> Option<Instant> {
        expire_at.map(|at| {
            let left_ms = (at * 1000 - now_millis()).max(0) as u64;
            Instant::now()
                + Duration::from_millis(left_ms)
                + self.node.config.client.expired_close_delay
        })
    }

    fn next_deadline(&self) -> Instant {
        [
            self.stale_deadline,
            self.next_ping,
            self.next_presence,
            self.next_position_check,
            self.pong_deadline,
            self.expire_deadline,
        ]
        .into_iter()
        .chain(self.subs.values().map(|s| s.expire_deadline))
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    async fn on_timer(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if self.stale_deadline.is_some_and(|d| d <= now) {
            return Err(Disconnect::STALE);
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            return Err(Disconnect::NO_PONG);
        }
        if self.expire_deadline.is_some_and(|d| d <= now) {
            return Err(Disconnect::EXPIRED);
        }
        if self
            .subs
            .values()
            .any(|s| s.expire_deadline.is_some_and(|d| d <= now))
        {
            return Err(Disconnect::SUBSCRIPTION_EXPIRED);
        }
        if self.next_ping.is_some_and(|d| d <= now) {
            let cfg = &self.node.config.client;
            self.send(&Reply::default());
            if !self.transport.unidirectional
                && self.pong_deadline.is_none()
                && !cfg.pong_timeout.is_zero()
            {
                self.pong_deadline = Some(now + cfg.pong_timeout);
            }
            self.next_ping = Some(now + cfg.ping_interval);
        }
        if self.next_presence.is_some_and(|d| d <= now) {
            // Shorter than the engine's presence TTL (validated), so the entries live
            // exactly as long as the connection.
            self.next_presence = Some(now + self.node.config.client.presence_update_interval);
            self.refresh_presence().await;
        }
        if self.next_position_check.is_some_and(|d| d <= now) {
            self.next_position_check =
                Some(now + self.node.config.client.channel_position_check_delay);
            self.check_positions().await?;
        }
        Ok(())
    }

    /// Compares each positioned subscription's position with its stream top; one that is
    /// behind (a publication lost on its way to this node and no later one to reveal it)
    /// is made to recover.
    async fn check_positions(&mut self) -> Result<(), Disconnect> {
        let positioned: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.positioned)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in positioned {
            if let Some(generation) = self.node.check_position(&channel, &self.handle).await {
                self.insufficient_state(&channel, generation).await?;
            }
        }
        Ok(())
    }

    /// A subscription lost publications: a client-side one is unsubscribed with 2500
    /// (insufficient state; the SDK resubscribes and recovers), a server-side one closes
    /// the connection with 3010 (the SDK reconnects and recovers). Stale generations are
    /// ignored.
    async fn insufficient_state(
        &mut self,
        channel: &str,
        generation: u64,
    ) -> Result<(), Disconnect> {
        let Some(sub) = self.subs.get(channel) else {
            return Ok(());
        };
        if sub.generation != generation {
            return Ok(());
        }
        tracing::info!(client = %self.handle.client, user = %self.user, channel, server_side = sub.server_side, "subscription lost publications: the client must recover");
        if sub.server_side {
            return Err(Disconnect::INSUFFICIENT_STATE);
        }
        if self.unsubscribe_core(channel).await {
            self.send_unsubscribe(channel, unsubscribe::INSUFFICIENT_STATE);
        }
        Ok(())
    }

    /// Tells the client its subscription to `channel` ended, with an unsubscribe code.
    fn send_unsubscribe(&self, channel: &str, (code, reason): (u32, &str)) {
        self.send(&Reply {
            push: Some(proto::Push {
                channel: channel.to_string(),
                unsubscribe: Some(proto::Unsubscribe {
                    code,
                    reason: reason.to_string(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    /// Activates a subscription in the hub (see [`crate::hub::Hub::activate`]).
    fn activate(
        &self,
        channel: &str,
        reply: Option<(Bytes, Option<Tags>)>,
        position: Option<&StreamPosition>,
    ) {
        if self
            .node
            .hub
            .activate(channel, &self.handle, reply, position)
        {
            self.node.metrics.gap_detected(GapLabel::DELIVERY);
        }
    }

    async fn refresh_presence(&self) {
        for (channel, sub) in &self.subs {
            if sub.presence {
                let info = self.client_info(&sub.chan_info);
                self.node.add_presence(channel, &info).await;
            }
        }
    }

    /// Connects a unidirectional client from its connect request. Failures that a
    /// bidirectional client would get as an error reply become disconnects, since a
    /// unidirectional client reads pushes only.
    ///
    /// `resume` holds stream positions the client reported out of band (SSE
    /// `Last-Event-ID`): each of its channels that the connection subscribes to is
    /// recovered from there, overriding positions in the request.
    pub async fn connect_unidirectional(
        &mut self,
        req: proto::ConnectRequest,
        resume: HashMap<String, StreamPosition>,
    ) -> Result<(), Disconnect> {
        self.resume = resume;
        match self.on_connect(1, req).await {
            Ok(_) if self.connected => Ok(()),
            Ok(_) => Err(Disconnect::BAD_REQUEST),
            Err(Failure::Close(d)) => Err(d),
            Err(Failure::Reply(e)) if e.code == ClientError::TOKEN_EXPIRED.code => {
                Err(Disconnect::EXPIRED)
            }
            Err(Failure::Reply(e)) if e.code == ClientError::UNAUTHORIZED.code => {
                Err(Disconnect::INVALID_TOKEN)
            }
            Err(Failure::Reply(_)) => Err(Disconnect::BAD_REQUEST),
        }
    }

    /// Decodes one inbound frame and handles each command in it, in order.
    pub async fn handle_frame(&mut self, frame: &[u8]) -> Result<(), Disconnect> {
        let commands: Vec<Command> = self
            .transport
            .encoding
            .decode(frame, self.node.config.client.max_json_depth)
            .map_err(|e| {
                tracing::debug!(client = %self.handle.client, error = %e, "malformed frame");
                Disconnect::BAD_REQUEST
            })?;
        self.node
            .metrics
            .messages_received
            .get_or_create(&TransportLabel {
                transport: self.transport.name,
            })
            .inc_by(commands.len() as u64);
        for cmd in commands {
            self.handle_command(cmd).await?;
        }
        Ok(())
    }

    /// Handles one command: queues its reply, or returns the disconnect it causes.
    pub async fn handle_command(&mut self, cmd: Command) -> Result<(), Disconnect> {
        // Any message from the client proves it is alive.
        self.pong_deadline = None;
        let id = cmd.id;
        let (method, result) = self.dispatch(cmd).await;
        if let Some(method) = method {
            self.node
                .metrics
                .commands
                .get_or_create(&MethodLabel { method })
                .inc();
        }
        match result {
            Ok(Some(mut reply)) => {
                reply.id = id;
                self.send(&reply);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(Failure::Reply(e)) => {
                if id == 0 {
                    // Nothing to correlate the error with: the command was malformed.
                    return Err(Disconnect::BAD_REQUEST);
                }
                self.send(&Reply {
                    id,
                    error: Some(e.to_proto()),
                    ..Default::default()
                });
                Ok(())
            }
            Err(Failure::Close(d)) => Err(d),
        }
    }

    async fn dispatch(&mut self, cmd: Command) -> (Option<&'static str>, Handled) {
        let id = cmd.id;
        if let Some(req) = cmd.connect {
            return (Some("connect"), self.on_connect(id, req).await);
        }
        if cmd == Command::default() {
            return (None, Ok(None)); // a pong
        }
        if !self.connected {
            return (None, Err(Failure::Close(Disconnect::BAD_REQUEST)));
        }
        if cmd.send.is_some() {
            // Asynchronous message with no handler configured: accepted and dropped.
            return (Some("send"), Ok(None));
        }
        if id == 0 {
            return (None, Err(Failure::Close(Disconnect::BAD_REQUEST)));
        }
        if let Some(req) = cmd.subscribe {
            return (Some("subscribe"), self.on_subscribe(id, req).await);
        }
        if let Some(req) = cmd.unsubscribe {
            return (Some("unsubscribe"), self.on_unsubscribe(req).await);
        }
        if let Some(req) = cmd.publish {
            return (Some("publish"), self.on_publish(req).await);
        }
        if let Some(req) = cmd.presence {
            return (Some("presence"), self.on_presence(req).await);
        }
        if let Some(req) = cmd.presence_stats {
            return (Some("presence_stats"), self.on_presence_stats(req).await);
        }
        if let Some(req) = cmd.history {
            return (Some("history"), self.on_history(req).await);
        }
        if cmd.ping.is_some() {
            return (
                Some("ping"),
                Ok(Some(Reply {
                    ping: Some(proto::PingResult {}),
                    ..Default::default()
                })),
            );
        }
        if cmd.rpc.is_some() {
            return (Some("rpc"), Err(ClientError::NOT_AVAILABLE.into()));
        }
        if let Some(req) = cmd.refresh {
            return (Some("refresh"), self.on_refresh(req));
        }
        if let Some(req) = cmd.sub_refresh {
            return (Some("sub_refresh"), self.on_sub_refresh(req));
        }
        (None, Err(ClientError::METHOD_NOT_FOUND.into()))
    }

    fn send(&self, reply: &Reply) {
        self.send_tagged(reply, None);
    }

    fn send_tagged(&self, reply: &Reply, tags: Option<Tags>) {
        if let Some(bytes) = self.transport.encoding.encode_reply(reply) {
            self.handle.queue.push_tagged(bytes, tags);
        }
    }

    fn client_info(&self, chan_info: &Bytes) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.handle.client.clone(),
            conn_info: self.conn_info.clone(),
            chan_info: chan_info.clone(),
        }
    }

    fn ttl(expire_at: Option<i64>) -> (bool, u32) {
        match expire_at {
            Some(at) => (true, (at - now_millis() / 1000).max(0) as u32),
            None => (false, 0),
        }
    }

    async fn on_connect(&mut self, id: u32, req: proto::ConnectRequest) -> Handled {
        if self.connected {
            return Err(Failure::Close(Disconnect::BAD_REQUEST));
        }
        let cfg = self.node.config.clone();
        let mut channels = Vec::new();
        if !req.token.is_empty() {
            match self.node.verifier.verify_connect(&req.token) {
                Ok(claims) => {
                    let expire_at = claims.expire_at.filter(|at| *at > 0);
                    if expire_at.is_some_and(|at| at <= now_millis() / 1000) {
                        return Err(ClientError::TOKEN_EXPIRED.into());
                    }
                    self.user = claims.user;
                    self.set_expiry(expire_at);
                    self.conn_info = claims.info.unwrap_or_default();
                    channels = claims.channels;
                    channels.extend(claims.subs.into_keys());
                }
                Err(TokenError::Expired) => return Err(ClientError::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(reason)) => {
                    tracing::info!(client = %self.handle.client, %reason, "invalid connection token");
                    return Err(Failure::Close(Disconnect::INVALID_TOKEN));
                }
            }
        } else if !(cfg.client.insecure || cfg.client.allow_anonymous_connect_without_token) {
            return Err(ClientError::UNAUTHORIZED.into());
        }
        if self.node.is_shutting_down() {
            return Err(Failure::Close(Disconnect::SHUTDOWN));
        }
        self.connected = true;
        self.stale_deadline = None;
        self.node.hub.add_client(&self.handle, &self.user);
        if self.transport.emulation {
            self.session_id = uuid::Uuid::new_v4().to_string();
            self.node.hub.add_session(&self.session_id, &self.handle);
        }

        // Server-side subscriptions from the token, recovered with the positions the
        // client sent for them.
        let mut subs = HashMap::new();
        let mut activations = Vec::new();
        channels.sort();
        channels.dedup();
        let mut wanted: Vec<(String, Bytes, Option<i64>)> = channels
            .into_iter()
            .map(|c| (c, Bytes::new(), None))
            .collect();
        if self.transport.unidirectional {
            // A unidirectional client cannot send subscribe commands: the connect request
            // names its channels, each checked as a subscribe would be.
            let mut requested: Vec<(&String, &proto::SubscribeRequest)> = req.subs.iter().collect();
            requested.sort_by(|a, b| a.0.cmp(b.0));
            for (channel, sub_req) in requested {
                if wanted.iter().any(|(c, _, _)| c == channel) {
                    continue;
                }
                let opts = self.node.channel_options(channel)?;
                let (chan_info, expire_at) =
                    self.authorize_subscribe(channel, opts, &sub_req.token)?;
                wanted.push((channel.clone(), chan_info, expire_at));
            }
        }
        for (channel, chan_info, expire_at) in wanted {
            let mut sub_req = req.subs.get(&channel).cloned().unwrap_or_default();
            if let Some(pos) = self.resume.remove(&channel) {
                sub_req.recover = true;
                sub_req.offset = pos.offset;
                sub_req.epoch = pos.epoch;
            }
            match self
                .subscribe_core(&channel, &sub_req, chan_info, expire_at, true)
                .await
            {
                Ok((result, position)) => {
                    subs.insert(channel.clone(), result);
                    activations.push((channel, position));
                }
                Err(Failure::Reply(e)) => {
                    tracing::warn!(client = %self.handle.client, channel, error = %e, "server-side subscription failed");
                }
                Err(Failure::Close(d)) => return Err(Failure::Close(d)),
            }
        }
        // Positions the connect reply moves the client to, and (for transports that write
        // positions beside events) recovered publications as separate pushes.
        let mut tags = Vec::new();
        let mut recovered = Vec::new();
        for (channel, result) in subs.iter_mut() {
            if !result.positioned {
                continue;
            }
            let mut start = result.offset;
            if self.transport.positions_in_stream {
                let pubs = std::mem::take(&mut result.publications);
                if let Some(first) = pubs.first() {
                    start = first.offset.saturating_sub(1);
                }
                recovered.push((channel.clone(), result.epoch.clone(), pubs));
            }
            tags.push(PositionTag {
                channel: Arc::from(channel.as_str()),
                offset: start,
                epoch: Arc::from(result.epoch.as_str()),
            });
        }
        let (expires, ttl) = Self::ttl(self.expire_at);
        let reply = Reply {
            id,
            connect: Some(proto::ConnectResult {
                client: self.handle.client.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                expires,
                ttl,
                subs,
                ping: cfg.client.ping_interval.as_secs() as u32,
                pong: !self.transport.unidirectional,
                node: self.node.uid().to_string(),
                session: self.session_id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.send_tagged(&reply, (!tags.is_empty()).then(|| Tags::from(tags)));
        for (channel, epoch, pubs) in recovered {
            for publication in pubs {
                let tag = PositionTag {
                    channel: Arc::from(channel.as_str()),
                    offset: publication.offset,
                    epoch: Arc::from(epoch.as_str()),
                };
                let push = Reply {
                    push: Some(proto::Push {
                        channel: channel.clone(),
                        r#pub: Some(publication),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                self.send_tagged(&push, Some(Tags::from([tag])));
            }
        }
        for (channel, position) in activations {
            self.activate(&channel, None, position.as_ref());
            self.after_join(&channel).await;
        }
        self.next_presence = Some(Instant::now() + cfg.client.presence_update_interval);
        self.next_position_check = self
            .node
            .position_checks()
            .then(|| Instant::now() + cfg.client.channel_position_check_delay);
        self.next_ping = (!cfg.client.ping_interval.is_zero())
            .then(|| Instant::now() + cfg.client.ping_interval);
        Ok(None)
    }

    /// Checks that this client may subscribe to `channel`; returns its channel info.
    fn authorize_subscribe(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        token: &str,
    ) -> Result<(Bytes, Option<i64>), Failure> {
        let cfg = &self.node.config;
        if !token.is_empty() {
            return match self.node.sub_verifier.verify_subscribe(token) {
                Ok(claims) if claims.channel == channel && claims.user == self.user => {
                    let expire_at = claims.expire_at.filter(|at| *at > 0);
                    if expire_at.is_some_and(|at| at <= now_millis() / 1000) {
                        return Err(ClientError::TOKEN_EXPIRED.into());
                    }
                    Ok((claims.info.unwrap_or_default(), expire_at))
                }
                Ok(_) => Err(ClientError::PERMISSION_DENIED.into()),
                Err(TokenError::Expired) => Err(ClientError::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(_)) => Err(ClientError::PERMISSION_DENIED.into()),
            };
        }
        if cfg.client.insecure {
            return Ok((Bytes::new(), None));
        }
        let private = !cfg.channel.private_prefix.is_empty()
            && channel.starts_with(&cfg.channel.private_prefix);
        if private {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        if opts.allow_user_limited_channels
            && let Some((_, users)) = channel.split_once(&cfg.channel.user_boundary)
        {
            return if !self.user.is_empty()
                && users
                    .split(&cfg.channel.user_separator)
                    .any(|u| u == self.user)
            {
                Ok((Bytes::new(), None))
            } else {
                Err(ClientError::PERMISSION_DENIED.into())
            };
        }
        let allowed = if self.user.is_empty() {
            opts.allow_subscribe_for_anonymous
        } else {
            opts.allow_subscribe_for_client
        };
        if allowed {
            Ok((Bytes::new(), None))
        } else {
            Err(ClientError::PERMISSION_DENIED.into())
        }
    }

    async fn on_subscribe(&mut self, _id: u32, req: proto::SubscribeRequest) -> Handled {
        let channel = req.channel.clone();
        if self.subs.contains_key(&channel) {
            return Err(ClientError::ALREADY_SUBSCRIBED.into());
        }
        let limit = self.node.config.client.channel_limit;
        if limit > 0 && self.subs.len() >= limit {
            return Err(ClientError::LIMIT_EXCEEDED.into());
        }
        let opts = self.node.channel_options(&channel)?;
        let (chan_info, expire_at) = self.authorize_subscribe(&channel, opts, &req.token)?;
        let (result, position) = self
            .subscribe_core(&channel, &req, chan_info, expire_at, false)
            .await?;
        let reply = Reply {
            id: _id,
            subscribe: Some(result),
            ..Default::default()
        };
        let bytes = self.transport.encoding.encode_reply(&reply);
        self.activate(&channel, bytes.map(|b| (b, None)), position.as_ref());
        self.after_join(&channel).await;
        Ok(None)
    }

    /// Registers a subscription (pending in the hub) and computes its result, with the
    /// recovered publications when the client asked to recover. The caller queues the
    /// reply and activates the subscription with the returned position (the one the reply
    /// leaves the client at; `None` when the subscription is not positioned).
    async fn subscribe_core(
        &mut self,
        channel: &str,
        req: &proto::SubscribeRequest,
        chan_info: Bytes,
        expire_at: Option<i64>,
        server_side: bool,
    ) -> Result<(proto::SubscribeResult, Option<StreamPosition>), Failure> {
        let node = self.node.clone();
        let opts = node.channel_options(channel)?;
        let history_on = opts.history_size > 0 && !opts.history_ttl.is_zero();
        // As in Centrifugo: the namespace forces recovery/positioning, or allows clients
        // to ask for it.
        let recoverable = history_on
            && (opts.force_recovery || (opts.allow_recovery && (req.recoverable || req.recover)));
        let positioned = history_on
            && (recoverable
                || opts.force_positioning
                || (opts.allow_positioning && req.positioned));
        let join_leave = opts.join_leave && (opts.force_push_join_leave || req.join_leave);

        let generation = node
            .hub_subscribe(channel, &self.handle, join_leave)
            .await?;
        let (expires, ttl) = Self::ttl(expire_at);
        let mut result = proto::SubscribeResult {
            expires,
            ttl,
            recoverable,
            positioned,
            ..Default::default()
        };
        let mut position = None;
        if positioned {
            let recovering = recoverable && req.recover;
            let limit = match self.node.config.client.recovery_max_publication_limit {
                0 => usize::MAX - 1,
                n => n,
            };
            let filter = if recovering {
                HistoryFilter {
                    since: Some(StreamPosition {
                        offset: req.offset,
                        epoch: req.epoch.clone(),
                    }),
                    limit: Some(limit + 1),
                    reverse: false,
                }
            } else {
                HistoryFilter {
                    limit: Some(0),
                    ..Default::default()
                }
            };
            let history = match node.recovery_history(channel, &filter).await {
                Ok(h) => h,
                Err(e) => {
                    node.hub_unsubscribe(channel, &self.handle).await;
                    return Err(e.into());
                }
            };
            if recovering {
                let same_epoch = history.position.epoch == req.epoch;
                let pubs = if same_epoch {
                    history.publications
                } else {
                    Vec::new()
                };
                let complete = match pubs.first() {
                    Some(first) => first.offset == req.offset + 1,
                    None => history.position.offset == req.offset,
                };
                result.recovered = same_epoch && complete && pubs.len() <= limit;
                result.was_recovering = true;
                result.publications = pubs.iter().take(limit).map(|p| p.to_proto()).collect();
            }
            result.epoch = history.position.epoch.clone();
            result.offset = history.position.offset;
            position = Some(history.position);
        }
        self.subs.insert(
            channel.to_string(),
            SubState {
                presence: opts.presence,
                join_leave: opts.join_leave,
                positioned,
                server_side,
                generation,
                chan_info,
                expire_deadline: self.expiry_deadline(expire_at),
            },
        );
        Ok((result, position))
    }

    async fn after_join(&self, channel: &str) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        let info = self.client_info(&sub.chan_info);
        if sub.presence {
            self.node.add_presence(channel, &info).await;
        }
        if sub.join_leave {
            self.node.publish_join(channel, &info).await;
        }
    }

    async fn unsubscribe_core(&mut self, channel: &str) -> bool {
        let Some(sub) = self.subs.remove(channel) else {
            return false;
        };
        self.node.hub_unsubscribe(channel, &self.handle).await;
        if sub.presence {
            self.node
                .remove_presence(channel, &self.handle.client)
                .await;
        }
        if sub.join_leave {
            let info = self.client_info(&sub.chan_info);
            self.node.publish_leave(channel, &info).await;
        }
        true
    }

    async fn on_unsubscribe(&mut self, req: proto::UnsubscribeRequest) -> Handled {
        self.unsubscribe_core(&req.channel).await;
        Ok(Some(Reply {
            unsubscribe: Some(proto::UnsubscribeResult {}),
            ..Default::default()
        }))
    }

    /// Checks a channel operation against the namespace's `allow_<op>_for_subscriber`,
    /// `_for_client` and `_for_anonymous` options; returns the namespace's options.
    fn authorize(&self, channel: &str, op: Operation) -> Result<&ChannelOptions, Failure> {
        let opts = self.node.channel_options(channel)?;
        let (for_subscriber, for_client, for_anonymous) = match op {
            Operation::Publish => (
                opts.allow_publish_for_subscriber,
                opts.allow_publish_for_client,
                opts.allow_publish_for_anonymous,
            ),
            Operation::Presence => (
                opts.allow_presence_for_subscriber,
                opts.allow_presence_for_client,
                opts.allow_presence_for_anonymous,
            ),
            Operation::History => (
                opts.allow_history_for_subscriber,
                opts.allow_history_for_client,
                opts.allow_history_for_anonymous,
            ),
        };
        let allowed = self.node.config.client.insecure
            || (for_subscriber && self.subs.contains_key(channel))
            || if self.user.is_empty() {
                for_anonymous
            } else {
                for_client
            };
        if allowed {
            Ok(opts)
        } else {
            Err(ClientError::PERMISSION_DENIED.into())
        }
    }

    async fn on_publish(&mut self, req: proto::PublishRequest) -> Handled {
        self.authorize(&req.channel, Operation::Publish)?;
        if req.data.is_empty() {
            return Err(ClientError::BAD_REQUEST
                .with_message("data required")
                .into());
        }
        let chan_info = self
            .subs
            .get(&req.channel)
            .map(|s| s.chan_info.clone())
            .unwrap_or_default();
        let info = self.client_info(&chan_info);
        self.node
            .publish(&req.channel, req.data, Some(info), HashMap::new(), false)
            .await?;
        Ok(Some(Reply {
            publish: Some(proto::PublishResult {}),
            ..Default::default()
        }))
    }

    async fn on_presence(&mut self, req: proto::PresenceRequest) -> Handled {
        self.authorize(&req.channel, Operation::Presence)?;
        let presence = self.node.presence(&req.channel).await?;
        Ok(Some(Reply {
            presence: Some(proto::PresenceResult {
                presence: presence
                    .into_iter()
                    .map(|(k, v)| (k, v.to_proto()))
                    .collect(),
            }),
            ..Default::default()
        }))
    }

    async fn on_presence_stats(&mut self, req: proto::PresenceStatsRequest) -> Handled {
        self.authorize(&req.channel, Operation::Presence)?;
        let (num_clients, num_users) = self.node.presence_stats(&req.channel).await?;
        Ok(Some(Reply {
            presence_stats: Some(proto::PresenceStatsResult {
                num_clients,
                num_users,
            }),
            ..Default::default()
        }))
    }

    async fn on_history(&mut self, req: proto::HistoryRequest) -> Handled {
        self.authorize(&req.channel, Operation::History)?;
        let max = match self.node.config.client.history_max_publication_limit {
            0 => usize::MAX,
            n => n,
        };
        let limit = match req.limit {
            0 => 0,
            n if n < 0 => max,
            n => (n as usize).min(max),
        };
        let filter = HistoryFilter {
            since: req.since.map(|s| StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            limit: Some(limit),
            reverse: req.reverse,
        };
        let result = self.node.history(&req.channel, &filter).await?;
        Ok(Some(Reply {
            history: Some(proto::HistoryResult {
                publications: result.publications.iter().map(|p| p.to_proto()).collect(),
                epoch: result.position.epoch,
                offset: result.position.offset,
            }),
            ..Default::default()
        }))
    }

    fn on_refresh(&mut self, req: proto::RefreshRequest) -> Handled {
        match self.node.verifier.verify_connect(&req.token) {
            Ok(claims) if claims.user == self.user => {
                let expire_at = claims.expire_at.filter(|at| *at > 0);
                if expire_at.is_some_and(|at| at <= now_millis() / 1000) {
                    return Err(ClientError::TOKEN_EXPIRED.into());
                }
                self.set_expiry(expire_at);
                let (expires, ttl) = Self::ttl(expire_at);
                Ok(Some(Reply {
                    refresh: Some(proto::RefreshResult {
                        client: self.handle.client.clone(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        expires,
                        ttl,
                    }),
                    ..Default::default()
                }))
            }
            Ok(_) => Err(Failure::Close(Disconnect::INVALID_TOKEN)),
            Err(TokenError::Expired) => Err(ClientError::TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid(_)) => Err(Failure::Close(Disconnect::INVALID_TOKEN)),
        }
    }

    fn on_sub_refresh(&mut self, req: proto::SubRefreshRequest) -> Handled {
        if !self.subs.contains_key(&req.channel) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        match self.node.sub_verifier.verify_subscribe(&req.token) {
            Ok(claims) if claims.channel == req.channel && claims.user == self.user => {
                let expire_at = claims.expire_at.filter(|at| *at > 0);
                let deadline = self.expiry_deadline(expire_at);
                if let Some(sub) = self.subs.get_mut(&req.channel) {
                    sub.expire_deadline = deadline;
                }
                let (expires, ttl) = Self::ttl(expire_at);
                Ok(Some(Reply {
                    sub_refresh: Some(proto::SubRefreshResult { expires, ttl }),
                    ..Default::default()
                }))
            }
            Ok(_) | Err(TokenError::Invalid(_)) => Err(ClientError::PERMISSION_DENIED.into()),
            Err(TokenError::Expired) => Err(ClientError::TOKEN_EXPIRED.into()),
        }
    }

    /// Handles a request from the node (server API) for this session.
    pub async fn handle_control(&mut self, ctrl: Control) -> Result<(), Disconnect> {
        match ctrl {
            Control::Disconnect(d) => Err(d),
            Control::Frame(bytes) => self.handle_frame(&bytes).await,
            Control::Unsubscribe { channel } => {
                if self.unsubscribe_core(&channel).await {
                    self.send_unsubscribe(&channel, unsubscribe::SERVER);
                }
                Ok(())
            }
            Control::InsufficientState {
                channel,
                generation,
            } => self.insufficient_state(&channel, generation).await,
            Control::Subscribe { channel } => {
                if !self.connected || self.subs.contains_key(&channel) {
                    return Ok(());
                }
                match self
                    .subscribe_core(
                        &channel,
                        &proto::SubscribeRequest::default(),
                        Bytes::new(),
                        None,
                        true,
                    )
                    .await
                {
                    Ok((result, position)) => {
                        let push = Reply {
                            push: Some(proto::Push {
                                channel: channel.clone(),
                                subscribe: Some(proto::Subscribe {
                                    recoverable: result.recoverable,
                                    epoch: result.epoch.clone(),
                                    offset: result.offset,
                                    positioned: result.positioned,
                                    data: Bytes::new(),
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        };
                        let tags = result.positioned.then(|| {
                            Tags::from([PositionTag {
                                channel: Arc::from(channel.as_str()),
                                offset: result.offset,
                                epoch: Arc::from(result.epoch.as_str()),
                            }])
                        });
                        let bytes = self
                            .transport
                            .encoding
                            .encode_reply(&push)
                            .map(|b| (b, tags));
                        self.activate(&channel, bytes, position.as_ref());
                        self.after_join(&channel).await;
                    }
                    Err(_) => {
                        tracing::warn!(client = %self.handle.client, channel, "server-side subscribe failed")
                    }
                }
                Ok(())
            }
            Control::Refresh { expire_at, expired } => {
                if expired {
                    return Err(Disconnect::EXPIRED);
                }
                self.set_expiry(expire_at.filter(|at| *at > 0));
                let (expires, ttl) = Self::ttl(self.expire_at);
                self.send(&Reply {
                    push: Some(proto::Push {
                        refresh: Some(proto::Refresh { expires, ttl }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                Ok(())
            }
        }
    }

    /// Ends the session: subscriptions, presence and registry entries go; the queue is
    /// closed with `reason` (unless it was already closed with another).
    pub async fn close(mut self, reason: &Disconnect) {
        self.handle.queue.close(reason.clone());
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe_core(&channel).await;
        }
        if self.connected {
            self.node.hub.remove_client(&self.handle);
        }
        if !self.session_id.is_empty() {
            self.node.hub.remove_session(&self.session_id);
        }
        let m = &self.node.metrics;
        m.connections
            .get_or_create(&TransportLabel {
                transport: self.transport.name,
            })
            .dec();
        m.disconnects
            .get_or_create(&CodeLabel { code: reason.code })
            .inc();
        tracing::debug!(client = %self.handle.client, user = %self.user, code = reason.code, reason = %reason.reason, "session closed");
    }
}
