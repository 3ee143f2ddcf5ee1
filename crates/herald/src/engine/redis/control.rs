//! Node-to-node control over Redis: every node subscribes to one PUB/SUB channel,
//! `<prefix>.control` on the first instance of `engine.redis.address`, and publishes its
//! [`ControlMessage`]s there. Every node receives every message, the sender included, and
//! its handler ignores those addressed to another node, which is the [`Controller`]
//! contract. One Redis channel keeps each sender's messages in order; PUB/SUB delivers at
//! most once, as the contract allows (announcements repeat, and a lost command is a lost
//! API call, answered as sent).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::Shards;
use super::shard::{PubSub, PubSubHandler};
use crate::engine::control::{ControlHandler, ControlMessage, Controller};
use crate::engine::{EngineError, Lifecycle};

/// Wait between attempts to subscribe to the control channel while Redis is unreachable
/// at start (once subscribed, the PUB/SUB reader resubscribes by itself).
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(500);

/// The Redis controller.
pub struct RedisController {
    shards: Arc<Shards>,
    /// A PUB/SUB connection of its own, so that control never waits behind channel traffic.
    pubsub: Arc<PubSub>,
    inbox: Arc<Inbox>,
    stop: CancellationToken,
}

/// Hands decoded messages to the node's handler (shared with the reader task).
#[derive(Default)]
struct Inbox {
    handler: OnceLock<Arc<dyn ControlHandler>>,
}

impl RedisController {
    pub(super) fn new(shards: Arc<Shards>) -> RedisController {
        let pubsub = Arc::new(PubSub::new(&shards.shards[0], "control"));
        RedisController {
            shards,
            pubsub,
            inbox: Arc::new(Inbox::default()),
            stop: CancellationToken::new(),
        }
    }
}

#[async_trait]
impl PubSubHandler for Inbox {
    fn message(&self, _channel: &[u8], payload: &[u8]) {
        match ControlMessage::decode(payload) {
            Ok(message) => {
                if let Some(h) = self.handler.get() {
                    h.handle_control(message);
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignored a control message"),
        }
    }

    async fn resubscribed(&self, _channels: &[Vec<u8>]) {
        // Messages sent while the connection was down are lost (at most once); nodes
        // announce themselves again within their interval.
    }
}

#[async_trait]
impl Lifecycle for RedisController {
    fn start(self: Arc<Self>) {
        let inbox = self.inbox.clone() as Arc<dyn PubSubHandler>;
        tokio::spawn(self.pubsub.clone().run(inbox, self.stop.clone()));
        let pubsub = self.pubsub.clone();
        let stop = self.stop.clone();
        let channel = self.shards.keys.control();
        tokio::spawn(async move {
            loop {
                match pubsub.subscribe(channel.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "control channel: subscribe failed; retrying")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(SUBSCRIBE_RETRY) => {}
                }
            }
        });
    }

    async fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for RedisController {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Controller for RedisController {
    fn register_handler(&self, handler: Arc<dyn ControlHandler>) {
        let _ = self.inbox.handler.set(handler);
    }

    async fn publish(&self, message: ControlMessage) -> Result<(), EngineError> {
        self.shards.shards[0]
            .publish(self.shards.keys.control(), message.encode())
            .await
    }
}
