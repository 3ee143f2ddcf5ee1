//! Commands other than connecting and subscribing: publish, presence, presence_stats and
//! history, each checked against the namespace's permissions (or, for publish, by the
//! backend when the namespace enables the publish proxy), and RPC, answered by the
//! backend through the RPC proxy.

use std::collections::HashMap;

use super::permissions::{self, Operation};
use super::{Failure, Handled, Session};
use crate::config::ChannelOptions;
use crate::engine::{HistoryFilter, StreamPosition};
use crate::error::ClientError;
use crate::protocol::proto;
use crate::protocol::proto::Reply;
use crate::proxy::{Call, ChannelHook, Hook};

impl Session {
    /// Checks a channel operation against the namespace's options (see
    /// [`permissions::may`]); returns the namespace's options.
    pub(super) fn authorize(
        &self,
        channel: &str,
        op: Operation,
    ) -> Result<&ChannelOptions, Failure> {
        let opts = self.node.channel_options(channel)?;
        if permissions::may(op, opts, self.asker(), self.subs.contains_key(channel)) {
            Ok(opts)
        } else {
            Err(ClientError::PERMISSION_DENIED.into())
        }
    }

    pub(super) async fn on_publish(&mut self, req: proto::PublishRequest) -> Handled {
        let node = self.node.clone();
        let opts = node.channel_options(&req.channel)?;
        if req.data.is_empty() {
            return Err(ClientError::BAD_REQUEST
                .with_message("data required")
                .into());
        }
        if !self.publication_rate.try_take() {
            node.metrics.rate_limited("publication");
            return Err(ClientError::TOO_MANY_REQUESTS.into());
        }
        let mut data = req.data;
        let mut tags = HashMap::new();
        let mut skip_history = false;
        if opts.publish_proxy_enabled {
            // The backend decides instead of the allow_publish_* rules, and may replace
            // the data.
            let proxy = node
                .proxies
                .channel(ChannelHook::Publish, opts)
                .ok_or(ClientError::INTERNAL)?;
            let call = Call {
                hook: Hook::Publish,
                conn: self.proxy_conn(),
                channel: &req.channel,
                method: "",
                data: &data,
                name: "",
                version: "",
            };
            let granted = self.ask(proxy, call).await?;
            if let Some(replaced) = granted.data {
                data = replaced;
            }
            tags = granted.tags;
            skip_history = granted.skip_history;
        } else {
            self.authorize(&req.channel, Operation::Publish)?;
        }
        let chan_info = self
            .subs
            .get(&req.channel)
            .map(|s| s.chan_info.clone())
            .unwrap_or_default();
        let info = self.client_info(&chan_info);
        node.publish(&req.channel, data, Some(info), tags, skip_history)
            .await?;
        Ok(Some(Reply {
            publish: Some(proto::PublishResult {}),
            ..Default::default()
        }))
    }

    /// A client's RPC: answered by the backend when the method's RPC namespace enables
    /// the proxy; `not available` (108) otherwise, as Centrifugo without an RPC handler.
    pub(super) async fn on_rpc(&mut self, req: proto::RpcRequest) -> Handled {
        let node = self.node.clone();
        let proxy = node
            .config
            .rpc
            .options(&req.method)
            .and_then(|opts| node.proxies.rpc(&opts));
        let Some(proxy) = proxy else {
            return Err(ClientError::NOT_AVAILABLE.into());
        };
        let call = Call {
            hook: Hook::Rpc,
            conn: self.proxy_conn(),
            channel: "",
            method: &req.method,
            data: &req.data,
            name: "",
            version: "",
        };
        let granted = self.ask(proxy, call).await?;
        Ok(Some(Reply {
            rpc: Some(proto::RpcResult {
                data: granted.data.unwrap_or_default(),
            }),
            ..Default::default()
        }))
    }

    pub(super) async fn on_presence(&mut self, req: proto::PresenceRequest) -> Handled {
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

    pub(super) async fn on_presence_stats(&mut self, req: proto::PresenceStatsRequest) -> Handled {
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

    pub(super) async fn on_history(&mut self, req: proto::HistoryRequest) -> Handled {
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
}
