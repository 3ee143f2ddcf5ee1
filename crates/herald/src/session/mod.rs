//! One client connection's state machine, independent of sockets: it turns commands into
//! replies and hub subscriptions, keeps the connection alive with pings, enforces token
//! expiry and cleans up when the connection ends.
//!
//! A transport adapter creates a [`Session`], feeds it frames (or decoded commands) and
//! drains [`ClientHandle::queue`] to its socket. Replies and pushes all go through that one
//! queue, so their order on the wire is the order in which the session produced them.
//!
//! This module holds the session's state, its run loop and command dispatch; each concept
//! has a module of its own: `connect`, `subscribe`, `commands` (publish, presence,
//! history), `control` (requests from the node), `liveness` (timers), and the pure rules
//! they apply: `permissions` and `recovery`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::engine::{ClientInfo, StreamPosition, now_millis};
use crate::error::{ClientError, Disconnect};
use crate::hub::{ClientHandle, Tags};
use crate::metrics::{CodeLabel, MethodLabel, TransportLabel};
use crate::node::Node;
use crate::protocol::Encoding;
use crate::protocol::proto::{self, Command, Reply};

mod commands;
mod connect;
mod control;
mod liveness;
mod permissions;
mod recovery;
mod subscribe;

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
    /// the client refreshes it with sub_refresh; with the sub_refresh proxy, when the
    /// server asks the backend.
    expire_deadline: Option<Instant>,
    /// The sub_refresh proxy, not the client, prolongs this subscription.
    refresh_by_proxy: bool,
}

/// What a transport feeds a running session: frames to decode, or commands its framing
/// already decoded.
enum Inbound {
    Frame(Bytes),
    Command(Box<Command>),
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
    /// The client's HTTP request headers (gRPC: call metadata) that some proxy hook
    /// forwards (nothing unless one is configured); see [`Session::keep_request_headers`].
    request_headers: http::HeaderMap,
    /// `headers` of the client's connect command (headers emulation), kept for the hooks
    /// after connect when some proxy is configured.
    emulated_headers: HashMap<String, String>,
    /// The connection's meta from the connect proxy: sent to proxies that include it,
    /// never to clients.
    meta: Bytes,
    /// The connection's expiry is prolonged by the refresh proxy rather than by the
    /// client.
    refresh_by_proxy: bool,
    /// Commands this connection may still send (`client.command_rate_limit`).
    command_rate: crate::rate::TokenBucket,
    /// Publications this connection may still send (`client.publication_rate_limit`).
    publication_rate: crate::rate::TokenBucket,
}

impl Session {
    /// A new, not yet connected session with its own outbound queue.
    pub fn new(node: Arc<Node>, transport: TransportInfo) -> Session {
        let stale_close_delay = node.config.client.stale_close_delay;
        let limits = &node.config.client;
        let command_rate = crate::rate::TokenBucket::new(
            f64::from(limits.command_rate_limit),
            f64::from(limits.command_rate_burst),
        );
        let publication_rate = crate::rate::TokenBucket::new(
            f64::from(limits.publication_rate_limit),
            f64::from(limits.publication_rate_limit),
        );
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
            request_headers: http::HeaderMap::new(),
            emulated_headers: HashMap::new(),
            meta: Bytes::new(),
            refresh_by_proxy: false,
            command_rate,
            publication_rate,
        }
    }

    /// Keeps those of the client's HTTP request headers (or gRPC metadata) that a proxy
    /// hook forwards to the backend (`http_headers` and `grpc_metadata` of the proxies'
    /// configs); the rest are not kept.
    pub fn keep_request_headers(&mut self, headers: &http::HeaderMap) {
        for name in self.node.proxies.forwarded_headers() {
            for value in headers.get_all(name) {
                if let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) {
                    self.request_headers.append(n, value.clone());
                }
            }
        }
    }

    /// This connection, as a proxy call describes it.
    fn proxy_conn(&self) -> crate::proxy::Conn<'_> {
        crate::proxy::Conn {
            client: &self.handle.client,
            transport: self.transport.name,
            encoding: self.transport.encoding,
            user: &self.user,
            meta: &self.meta,
            headers: &self.request_headers,
            emulated: &self.emulated_headers,
            grpc: self.transport.name.contains("grpc"),
        }
    }

    /// Asks the backend through `proxy`. A refusal becomes the backend's error reply or
    /// disconnect; a backend that fails or is too slow gives the temporary internal error
    /// (100), so SDKs retry with backoff.
    async fn ask(
        &self,
        proxy: &crate::proxy::Proxy,
        call: crate::proxy::Call<'_>,
    ) -> Result<crate::proxy::Granted, Failure> {
        let hook = call.hook;
        let outcome = proxy.call(call).await;
        self.node.metrics.proxy_call(hook.name(), &outcome);
        match outcome {
            Ok(crate::proxy::Outcome::Accept(granted)) => Ok(granted),
            Ok(crate::proxy::Outcome::Refuse(e)) => Err(e.into()),
            Ok(crate::proxy::Outcome::Disconnect(d)) => Err(Failure::Close(d)),
            Err(e) => {
                tracing::warn!(client = %self.handle.client, hook = hook.name(), error = %e, "proxy call failed");
                Err(ClientError::INTERNAL.into())
            }
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
        if !self.command_rate.try_take() {
            self.node.metrics.rate_limited("command");
            return (None, Err(ClientError::TOO_MANY_REQUESTS.into()));
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
        if let Some(req) = cmd.rpc {
            return (Some("rpc"), self.on_rpc(req).await);
        }
        if let Some(req) = cmd.refresh {
            return (Some("refresh"), self.on_refresh(req).await);
        }
        if let Some(req) = cmd.sub_refresh {
            return (Some("sub_refresh"), self.on_sub_refresh(req).await);
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

    /// This client, as the permission rules see it.
    fn asker(&self) -> permissions::Asker<'_> {
        permissions::Asker {
            user: &self.user,
            insecure: self.node.config.client.insecure,
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
