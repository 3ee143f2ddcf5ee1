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
use crate::proxy::{ConnectCall, ConnectGrant, ConnectOutcome};

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
            Err(Failure::Reply(_)) => Err(Disconnect::BAD_REQUEST),
        }
    }

    pub(super) async fn on_connect(&mut self, id: u32, req: proto::ConnectRequest) -> Handled {
        if self.connected {
            return Err(Failure::Close(Disconnect::BAD_REQUEST));
        }
        let cfg = self.node.config.clone();
        let mut channels = Vec::new();
        let mut connect_data = Bytes::new();
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
        } else if self.node.proxies.connect_enabled() {
            let grant = self.ask_connect_proxy(&req).await?;
            self.user = grant.user;
            self.set_expiry(grant.expire_at);
            self.conn_info = grant.info;
            connect_data = grant.data;
            channels = grant.channels;
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

    pub(super) fn on_refresh(&mut self, req: proto::RefreshRequest) -> Handled {
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

    /// Asks the backend's connect proxy who this client is (a connect without a token). A
    /// backend that refuses gives its error or disconnect; one that fails or is too slow
    /// gives the temporary internal error (100), so SDKs retry with backoff.
    async fn ask_connect_proxy(
        &mut self,
        req: &proto::ConnectRequest,
    ) -> Result<ConnectGrant, Failure> {
        let call = ConnectCall {
            client: &self.handle.client,
            transport: self.transport.name,
            encoding: self.transport.encoding,
            name: &req.name,
            version: &req.version,
            data: &req.data,
            emulated: &req.headers,
            headers: &self.request_headers,
        };
        let started = std::time::Instant::now();
        let answer = self.node.proxies.connect(call).await;
        tracing::debug!(client = %self.handle.client, elapsed_ms = started.elapsed().as_millis() as u64, "connect proxy answered");
        match answer {
            Some(Ok(ConnectOutcome::Accept(grant))) => Ok(grant),
            Some(Ok(ConnectOutcome::Refuse(e))) => Err(e.into()),
            Some(Ok(ConnectOutcome::Disconnect(d))) => Err(Failure::Close(d)),
            Some(Err(e)) => {
                tracing::warn!(client = %self.handle.client, error = %e, "connect proxy failed");
                Err(ClientError::INTERNAL.into())
            }
            None => Err(ClientError::UNAUTHORIZED.into()),
        }
    }
}
