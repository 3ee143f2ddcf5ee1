//! A session's timers: the stale deadline before connect, pings and pong deadlines, token and
//! subscription expiry, presence refreshes and the periodic check of stream positions.

use std::time::Duration;

use tokio::time::Instant;

use super::Session;
use crate::engine::now_millis;
use crate::error::Disconnect;
use crate::protocol::proto::Reply;

impl Session {
    /// Sets when the credentials expire (Unix seconds) and so when the connection closes:
    /// `client.expired_close_delay` later, unless the client refreshes first. With a
    /// refresh proxy the deadline is the expiry itself: the server asks the backend then.
    pub(super) fn set_expiry(&mut self, expire_at: Option<i64>) {
        self.expire_at = expire_at;
        self.expire_deadline = if self.refresh_by_proxy {
            expire_at.map(|at| {
                Instant::now() + Duration::from_millis((at * 1000 - now_millis()).max(0) as u64)
            })
        } else {
            self.expiry_deadline(expire_at)
        };
    }

    /// The instant credentials expiring at `expire_at` (Unix seconds) close what they
    /// protect: `client.expired_close_delay` later, unless refreshed first.
    pub(super) fn expiry_deadline(&self, expire_at: Option<i64>) -> Option<Instant> {
        expire_at.map(|at| {
            let left_ms = (at * 1000 - now_millis()).max(0) as u64;
            Instant::now()
                + Duration::from_millis(left_ms)
                + self.node.config.client.expired_close_delay
        })
    }

    pub(super) fn next_deadline(&self) -> Instant {
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

    pub(super) async fn on_timer(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if self.stale_deadline.is_some_and(|d| d <= now) {
            return Err(Disconnect::STALE);
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            return Err(Disconnect::NO_PONG);
        }
        if self.expire_deadline.is_some_and(|d| d <= now) {
            if !self.refresh_by_proxy {
                return Err(Disconnect::EXPIRED);
            }
            self.refresh_with_proxy().await?;
        }
        let expired: Vec<(String, bool)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expire_deadline.is_some_and(|d| d <= now))
            .map(|(c, s)| (c.clone(), s.refresh_by_proxy))
            .collect();
        for (channel, by_proxy) in expired {
            if !by_proxy {
                return Err(Disconnect::SUBSCRIPTION_EXPIRED);
            }
            self.sub_refresh_with_proxy(&channel).await?;
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
    pub(super) async fn check_positions(&mut self) -> Result<(), Disconnect> {
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

    pub(super) async fn refresh_presence(&self) {
        for (channel, sub) in &self.subs {
            if sub.presence {
                let info = self.client_info(&sub.chan_info);
                self.node.add_presence(channel, &info).await;
            }
        }
    }
}
