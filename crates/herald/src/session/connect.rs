//! Connecting: the connect command (token, server-side subscriptions and their recovery,
//! the connect reply), the unidirectional connect, and refresh.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Failure, Handled, Session};
use crate::auth::TokenError;
use crate::engine::{StreamPosition, now_millis};
use crate::error::{ClientError, Disconnect};
use crate::hub::{PositionTag, Tags};
use crate::protocol::proto;
use crate::protocol::proto::Reply;
use crate::proxy::{Call, Hook};

use super::subscribe::Grant;

impl Session {
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
            Err(Failure::Reply(e)) if e.code == ClientError::INTERNAL.code => {
                Err(Disconnect::SERVER_ERROR)
            }
            Err(Failure::Reply(_)) => Err(Disconnect::BAD_REQUEST),
        }
    }

    pub(super) async fn on_connect(&mut self, id: u32, req: proto::ConnectRequest) -> Handled {
        if self.connected {
            return Err(Failure::Close(Disconnect::BAD_REQUEST));
        }
        let cfg = self.node.config.clone();
        let node = self.node.clone();
        // Limits first, before any token or backend work is spent on the connect.
        let limits = &cfg.client;
        if !node.connect_rate.lock().try_take() {
            node.metrics.rate_limited("connect");
            return Err(Failure::Close(Disconnect::CONNECTION_LIMIT));
        }
        if limits.connection_limit > 0 && node.hub.num_clients() >= limits.connection_limit {
            node.metrics.rate_limited("connection_limit");
            return Err(Failure::Close(Disconnect::CONNECTION_LIMIT));
        }
        if node.proxies.any() {
            self.emulated_headers = req.headers.clone();
        }
        self.refresh_by_proxy = node.proxies.refresh().is_some();
        let mut channels = Vec::new();
        let mut connect_data = Bytes::new();
        if !req.token.is_empty() {
            match self.node.verifier.verify_connect(&req.token).await {
                Ok(claims) => {
                    let expire_at = claims.expire_at.filter(|at| *at > 0);
                    if expire_at.is_some_and(|at| at <= now_millis() / 1000) {
                        return Err(ClientError::TOKEN_EXPIRED.into());
                    }
                    self.user = claims.user;
                    self.set_expiry(expire_at);
                    self.conn_info = claims.info.unwrap_or_default();
                    if node.proxies.any()
                        && let Some(meta) = &claims.meta
                    {
                        // Kept only for the proxies that send it (include_connection_meta).
                        self.meta = Bytes::from(meta.to_string());
                    }
                    channels = claims.channels;
                    channels.extend(claims.subs.into_keys());
                }
                Err(TokenError::Expired) => return Err(ClientError::TOKEN_EXPIRED.into()),
                Err(TokenError::Unavailable(reason)) => {
                    tracing::warn!(client = %self.handle.client, %reason, "connection token not verifiable now");
                    return Err(ClientError::INTERNAL.into());
                }
                Err(TokenError::Invalid(reason)) => {
                    tracing::info!(client = %self.handle.client, %reason, "invalid connection token");
                    return Err(Failure::Close(Disconnect::INVALID_TOKEN));
                }
            }
        } else if let Some(proxy) = node.proxies.connect() {
            let call = Call {
                hook: Hook::Connect,
                conn: self.proxy_conn(),
                channel: "",
                method: "",
                data: &req.data,
                name: &req.name,
                version: &req.version,
            };
            let granted = self.ask(proxy, call).await?;
            self.user = granted.user;
            self.set_expiry(granted.expire_at);
            self.conn_info = granted.info.unwrap_or_default();
            self.meta = granted.meta.unwrap_or_default();
            connect_data = granted.data.unwrap_or_default();
            channels = granted.channels;
        } else if !(cfg.client.insecure || cfg.client.allow_anonymous_connect_without_token) {
            return Err(ClientError::UNAUTHORIZED.into());
        }
        if self.node.is_shutting_down() {
            return Err(Failure::Close(Disconnect::SHUTDOWN));
        }
        if limits.user_connection_limit > 0
            && !self.user.is_empty()
            && node.hub.user_connection_count(&self.user) >= limits.user_connection_limit
        {
            node.metrics.rate_limited("user_connection_limit");
            return Err(Failure::Close(Disconnect::CONNECTION_LIMIT));
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
        let mut wanted: Vec<(String, Grant)> = channels
            .into_iter()
            .map(|c| (c, Grant::default()))
            .collect();
        if self.transport.unidirectional {
            // A unidirectional client cannot send subscribe commands: the connect request
            // names its channels, each checked as a subscribe would be.
            let mut requested: Vec<(&String, &proto::SubscribeRequest)> = req.subs.iter().collect();
            requested.sort_by(|a, b| a.0.cmp(b.0));
            for (channel, sub_req) in requested {
                if wanted.iter().any(|(c, _)| c == channel) {
                    continue;
                }
                let grant = self.authorize_subscribe(channel, sub_req).await?;
                wanted.push((channel.clone(), grant));
            }
        }
        for (channel, grant) in wanted {
            let mut sub_req = req.subs.get(&channel).cloned().unwrap_or_default();
            if let Some(pos) = self.resume.remove(&channel) {
                sub_req.recover = true;
                sub_req.offset = pos.offset;
                sub_req.epoch = pos.epoch;
            }
            match self.subscribe_core(&channel, &sub_req, grant, true).await {
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
        // With a refresh proxy, the server prolongs the connection: the client is not
        // told it expires.
        let (expires, ttl) = if self.refresh_by_proxy {
            (false, 0)
        } else {
            Self::ttl(self.expire_at)
        };
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
                data: connect_data,
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

    pub(super) async fn on_refresh(&mut self, req: proto::RefreshRequest) -> Handled {
        match self.node.verifier.verify_connect(&req.token).await {
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
            Err(TokenError::Unavailable(_)) => Err(ClientError::INTERNAL.into()),
            Err(TokenError::Invalid(_)) => Err(Failure::Close(Disconnect::INVALID_TOKEN)),
        }
    }

    /// The connection reached its expiry and the refresh proxy prolongs it: asks the
    /// backend. `expired` (or a refusal) ends the connection (3005); a new `expire_at`
    /// moves the deadline, with new info when it sends some. A backend that fails is asked
    /// again later (`REFRESH_RETRY`), the connection kept meanwhile.
    pub(super) async fn refresh_with_proxy(&mut self) -> Result<(), Disconnect> {
        const REFRESH_RETRY: std::time::Duration = std::time::Duration::from_secs(10);
        let node = self.node.clone();
        let Some(proxy) = node.proxies.refresh() else {
            return Err(Disconnect::EXPIRED);
        };
        let no_data = Bytes::new();
        let call = Call {
            hook: Hook::Refresh,
            conn: self.proxy_conn(),
            channel: "",
            method: "",
            data: &no_data,
            name: "",
            version: "",
        };
        match self.ask(proxy, call).await {
            Ok(g) if g.expired => Err(Disconnect::EXPIRED),
            Ok(g) => {
                if let Some(info) = g.info {
                    self.conn_info = info;
                }
                if let Some(meta) = g.meta {
                    self.meta = meta;
                }
                match g.expire_at {
                    Some(at) if at > now_millis() / 1000 => self.set_expiry(Some(at)),
                    Some(_) => return Err(Disconnect::EXPIRED),
                    None => self.set_expiry(None),
                }
                Ok(())
            }
            Err(Failure::Reply(e)) if e.code == ClientError::INTERNAL.code => {
                self.expire_deadline = Some(Instant::now() + REFRESH_RETRY);
                Ok(())
            }
            Err(_) => Err(Disconnect::EXPIRED),
        }
    }
}
