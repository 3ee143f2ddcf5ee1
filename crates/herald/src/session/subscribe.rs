//! Subscriptions: subscribe (authorization, recovery), activation in the hub, join and
//! presence, unsubscribe, and sub_refresh.

use bytes::Bytes;

use super::{Failure, Handled, Session, SubState, permissions, recovery};
use crate::config::ChannelOptions;
use crate::engine::{StreamPosition, now_millis};
use crate::error::ClientError;
use crate::hub::Tags;
use crate::metrics::GapLabel;
use crate::protocol::proto;
use crate::protocol::proto::Reply;

impl Session {
    /// Activates a subscription in the hub (see [`crate::hub::Hub::activate`]).
    pub(super) fn activate(
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

    /// Checks that this client may subscribe to `channel` (with the subscription token,
    /// when it sent one); returns the channel info and when the subscription expires.
    pub(super) fn authorize_subscribe(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        token: &str,
    ) -> Result<(Bytes, Option<i64>), Failure> {
        if !token.is_empty() {
            let verified = self.node.sub_verifier.verify_subscribe(token);
            let now_secs = now_millis() / 1000;
            return Ok(permissions::subscription_grant(
                verified, channel, &self.user, now_secs,
            )?);
        }
        if permissions::may_subscribe(channel, opts, &self.node.config.channel, self.asker()) {
            Ok((Bytes::new(), None))
        } else {
            Err(ClientError::PERMISSION_DENIED.into())
        }
    }

    pub(super) async fn on_subscribe(&mut self, _id: u32, req: proto::SubscribeRequest) -> Handled {
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
    pub(super) async fn subscribe_core(
        &mut self,
        channel: &str,
        req: &proto::SubscribeRequest,
        chan_info: Bytes,
        expire_at: Option<i64>,
        server_side: bool,
    ) -> Result<(proto::SubscribeResult, Option<StreamPosition>), Failure> {
        let node = self.node.clone();
        let opts = node.channel_options(channel)?;
        let mode = recovery::Mode::of(opts, req);
        let recovery::Mode {
            recoverable,
            positioned,
            join_leave,
        } = mode;

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
            let recovering = mode.recovering(req);
            let limit = recovery::limit(self.node.config.client.recovery_max_publication_limit);
            let filter = recovery::filter(req, recovering, limit);
            let history = match node.recovery_history(channel, &filter).await {
                Ok(h) => h,
                Err(e) => {
                    node.hub_unsubscribe(channel, &self.handle).await;
                    return Err(e.into());
                }
            };
            if recovering {
                let (recovered, pubs) = recovery::outcome(&history, req, limit);
                result.recovered = recovered;
                result.was_recovering = true;
                result.publications = pubs.iter().map(|p| p.to_proto()).collect();
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

    pub(super) async fn after_join(&self, channel: &str) {
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

    pub(super) async fn unsubscribe_core(&mut self, channel: &str) -> bool {
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

    pub(super) async fn on_unsubscribe(&mut self, req: proto::UnsubscribeRequest) -> Handled {
        self.unsubscribe_core(&req.channel).await;
        Ok(Some(Reply {
            unsubscribe: Some(proto::UnsubscribeResult {}),
            ..Default::default()
        }))
    }

    pub(super) fn on_sub_refresh(&mut self, req: proto::SubRefreshRequest) -> Handled {
        if !self.subs.contains_key(&req.channel) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        let verified = self.node.sub_verifier.verify_subscribe(&req.token);
        let (_, expire_at) = permissions::subscription_grant(
            verified,
            &req.channel,
            &self.user,
            now_millis() / 1000,
        )?;
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
}
