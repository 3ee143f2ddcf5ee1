//! Subscriptions: subscribe (authorization, recovery), activation in the hub, join and
//! presence, unsubscribe, and sub_refresh.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Failure, Handled, Session, SubState, permissions, recovery};
use crate::config::ChannelOptions;
use crate::engine::{StreamPosition, now_millis};
use crate::error::{ClientError, Disconnect};
use crate::hub::Tags;
use crate::metrics::GapLabel;
use crate::protocol::proto;
use crate::protocol::proto::Reply;
use crate::proxy::{Call, ChannelHook, Hook, Overrides};

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

    /// Decides whether this client may subscribe to `channel`: by the subscription token
    /// when it sent one; by the backend when the namespace enables the subscribe proxy
    /// (not for user-limited channels, which name their users); by the namespace's
    /// `allow_subscribe_*` rules otherwise.
    pub(super) async fn authorize_subscribe(
        &self,
        channel: &str,
        req: &proto::SubscribeRequest,
    ) -> Result<Grant, Failure> {
        let node = self.node.clone();
        let opts = node.channel_options(channel)?;
        if !req.token.is_empty() {
            let verified = node.sub_verifier.verify_subscribe(&req.token).await;
            let now_secs = now_millis() / 1000;
            let (chan_info, expire_at) =
                permissions::subscription_grant(verified, channel, &self.user, now_secs)?;
            return Ok(Grant {
                chan_info,
                expire_at,
                ..Grant::default()
            });
        }
        let cfg = &node.config.channel;
        let user_limited = opts.allow_user_limited_channels && cfg.is_user_limited(channel);
        if opts.subscribe_proxy_enabled && !user_limited && !cfg.is_private(channel) {
            let proxy = node
                .proxies
                .channel(ChannelHook::Subscribe, opts)
                .ok_or(ClientError::INTERNAL)?;
            let call = Call {
                hook: Hook::Subscribe,
                conn: self.proxy_conn(),
                channel,
                method: "",
                data: &req.data,
                name: "",
                version: "",
            };
            let g = self.ask(proxy, call).await?;
            return Ok(Grant {
                chan_info: g.info.unwrap_or_default(),
                expire_at: g.expire_at,
                data: g.data.unwrap_or_default(),
                overrides: g.overrides,
            });
        }
        if permissions::may_subscribe(channel, opts, cfg, self.asker()) {
            Ok(Grant::default())
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
        let grant = self.authorize_subscribe(&channel, &req).await?;
        let (result, position) = self.subscribe_core(&channel, &req, grant, false).await?;
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
        grant: Grant,
        server_side: bool,
    ) -> Result<(proto::SubscribeResult, Option<StreamPosition>), Failure> {
        let node = self.node.clone();
        let opts = with_overrides(node.channel_options(channel)?, &grant.overrides);
        let opts = opts.as_ref();
        let expire_at = grant.expire_at;
        // An expiring subscription in a namespace with the sub_refresh proxy is prolonged
        // by the server asking the backend, not by the client: the reply does not say it
        // expires.
        let refresh_by_proxy = expire_at.is_some() && opts.sub_refresh_proxy_enabled;
        let mode = recovery::Mode::of(opts, req);
        let recovery::Mode {
            recoverable,
            positioned,
            join_leave,
        } = mode;

        let generation = node
            .hub_subscribe(channel, &self.handle, join_leave)
            .await?;
        let (expires, ttl) = if refresh_by_proxy {
            (false, 0)
        } else {
            Self::ttl(expire_at)
        };
        let mut result = proto::SubscribeResult {
            expires,
            ttl,
            recoverable,
            positioned,
            data: grant.data,
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
                chan_info: grant.chan_info,
                expire_deadline: if refresh_by_proxy {
                    at_unix(expire_at)
                } else {
                    self.expiry_deadline(expire_at)
                },
                refresh_by_proxy,
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

    pub(super) async fn on_sub_refresh(&mut self, req: proto::SubRefreshRequest) -> Handled {
        if !self.subs.contains_key(&req.channel) {
            return Err(ClientError::PERMISSION_DENIED.into());
        }
        let verified = self.node.sub_verifier.verify_subscribe(&req.token).await;
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

    /// A subscription prolonged by the sub_refresh proxy reached its expiry: asks the
    /// backend. `expired` (or a refusal) ends the connection as an expired subscription
    /// does (3006); a new `expire_at` moves the deadline, with new channel info when it
    /// sends some. A backend that fails is asked again later, the subscription kept.
    pub(super) async fn sub_refresh_with_proxy(&mut self, channel: &str) -> Result<(), Disconnect> {
        const SUB_REFRESH_RETRY: Duration = Duration::from_secs(10);
        let node = self.node.clone();
        let proxy = node
            .channel_options(channel)
            .ok()
            .and_then(|opts| node.proxies.channel(ChannelHook::SubRefresh, opts))
            .ok_or(Disconnect::SUBSCRIPTION_EXPIRED)?;
        let no_data = Bytes::new();
        let call = Call {
            hook: Hook::SubRefresh,
            conn: self.proxy_conn(),
            channel,
            method: "",
            data: &no_data,
            name: "",
            version: "",
        };
        let answer = self.ask(proxy, call).await;
        let Some(sub) = self.subs.get_mut(channel) else {
            return Ok(());
        };
        match answer {
            Ok(g) if g.expired => Err(Disconnect::SUBSCRIPTION_EXPIRED),
            Ok(g) => {
                if let Some(info) = g.info {
                    sub.chan_info = info;
                }
                match g.expire_at {
                    Some(at) if at > now_millis() / 1000 => {
                        sub.expire_deadline = at_unix(Some(at));
                        Ok(())
                    }
                    Some(_) => Err(Disconnect::SUBSCRIPTION_EXPIRED),
                    None => {
                        sub.expire_deadline = None;
                        Ok(())
                    }
                }
            }
            Err(Failure::Reply(e)) if e.code == ClientError::INTERNAL.code => {
                sub.expire_deadline = Some(Instant::now() + SUB_REFRESH_RETRY);
                Ok(())
            }
            Err(_) => Err(Disconnect::SUBSCRIPTION_EXPIRED),
        }
    }
}

/// What a subscription was granted, by a token, the backend or the namespace's rules.
#[derive(Debug, Default)]
pub(super) struct Grant {
    /// Channel info: in presence, join/leave and publications from this client.
    pub chan_info: Bytes,
    /// When the subscription expires (Unix seconds).
    pub expire_at: Option<i64>,
    /// Data for the subscribe reply (from the subscribe proxy).
    pub data: Bytes,
    /// The subscribe proxy's overrides of the namespace's options.
    pub overrides: Overrides,
}

/// The instant of a Unix time (seconds) from now; `None` stays `None`.
fn at_unix(at: Option<i64>) -> Option<Instant> {
    at.map(|at| Instant::now() + Duration::from_millis((at * 1000 - now_millis()).max(0) as u64))
}

/// A namespace's options with a subscribe proxy's overrides applied (borrowed when there
/// are none).
fn with_overrides<'a>(opts: &'a ChannelOptions, overrides: &Overrides) -> Cow<'a, ChannelOptions> {
    if *overrides == Overrides::default() {
        return Cow::Borrowed(opts);
    }
    let mut o = opts.clone();
    let set = |field: &mut bool, value: Option<bool>| {
        if let Some(v) = value {
            *field = v;
        }
    };
    set(&mut o.presence, overrides.presence);
    set(&mut o.join_leave, overrides.join_leave);
    set(&mut o.force_recovery, overrides.force_recovery);
    set(&mut o.force_positioning, overrides.force_positioning);
    set(
        &mut o.force_push_join_leave,
        overrides.force_push_join_leave,
    );
    Cow::Owned(o)
}
