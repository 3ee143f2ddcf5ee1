//! Channel commands other than subscribing: publish, presence, presence_stats and history,
//! each checked against the namespace's permissions.

use std::collections::HashMap;

use super::permissions::{self, Operation};
use super::{Failure, Handled, Session};
use crate::config::ChannelOptions;
use crate::engine::{HistoryFilter, StreamPosition};
use crate::error::ClientError;
use crate::protocol::proto;
use crate::protocol::proto::Reply;

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
