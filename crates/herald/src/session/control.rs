//! Requests for this session from the node (server API, other nodes, the hub): disconnect,
//! server-side subscribe and unsubscribe, refresh, emulation frames, lost publications.

use std::sync::Arc;

use bytes::Bytes;

use super::Session;
use crate::error::{Disconnect, unsubscribe};
use crate::hub::{Control, PositionTag, Tags};
use crate::protocol::proto;
use crate::protocol::proto::Reply;

impl Session {
    /// A subscription lost publications: a client-side one is unsubscribed with 2500
    /// (insufficient state; the SDK resubscribes and recovers), a server-side one closes
    /// the connection with 3010 (the SDK reconnects and recovers). Stale generations are
    /// ignored.
    pub(super) async fn insufficient_state(
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
    pub(super) fn send_unsubscribe(&self, channel: &str, (code, reason): (u32, &str)) {
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
                        super::subscribe::Grant::default(),
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
}
