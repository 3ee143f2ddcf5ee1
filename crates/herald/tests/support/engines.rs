//! Engines for tests: the memory engine behind a broker that behaves like a remote one,
//! and controllers that join several nodes of one process.
//!
//! [`RemoteLike`] wraps the memory broker. Like a broker reached over the network (Redis
//! PUB/SUB), it delivers a channel's events to the node only while the node is subscribed,
//! its `subscribe` and `unsubscribe` take time to take effect, and it can lose chosen
//! publications on their way to the node (kept in history, never delivered), as a PUB/SUB
//! message lost on a reconnect is. History and offsets are the memory broker's.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use herald::engine::control::{ControlHandler, ControlMessage, Controller};
use herald::engine::memory::{MemoryBroker, MemoryPresence};
use herald::engine::{
    Broker, BrokerEventHandler, ClientInfo, Engine, EngineError, HistoryFilter, HistoryResult,
    Lifecycle, Publication, PublishOptions, StreamPosition,
};
use parking_lot::Mutex;

/// What [`RemoteLike`] forwards to the node's handler, and what it holds back.
#[derive(Default)]
struct Gate {
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    /// Channels whose subscription took effect.
    live: Mutex<HashSet<String>>,
    /// (channel, offset) of publications to lose, each once.
    lose: Mutex<HashSet<(String, u64)>>,
    /// Publications lost so far.
    lost: Mutex<Vec<(String, u64)>>,
}

impl BrokerEventHandler for Gate {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Arc<Publication>,
        position: &StreamPosition,
    ) {
        if !self.live.lock().contains(channel) {
            return;
        }
        if self
            .lose
            .lock()
            .remove(&(channel.to_string(), publication.offset))
        {
            self.lost
                .lock()
                .push((channel.to_string(), publication.offset));
            return;
        }
        if let Some(h) = self.handler.get() {
            h.handle_publication(channel, publication, position);
        }
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        if self.live.lock().contains(channel)
            && let Some(h) = self.handler.get()
        {
            h.handle_join(channel, info);
        }
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        if self.live.lock().contains(channel)
            && let Some(h) = self.handler.get()
        {
            h.handle_leave(channel, info);
        }
    }
}

/// A broker that behaves like a remote one (see the module docs).
pub struct RemoteLike {
    inner: Arc<MemoryBroker>,
    gate: Arc<Gate>,
    subscribe_delay: Duration,
    unsubscribe_delay: Duration,
}

impl RemoteLike {
    /// A broker whose subscribe and unsubscribe take effect after these delays.
    pub fn new(subscribe_delay: Duration, unsubscribe_delay: Duration) -> Arc<RemoteLike> {
        let inner = Arc::new(MemoryBroker::new());
        let gate = Arc::new(Gate::default());
        inner.register_handler(gate.clone());
        Arc::new(RemoteLike {
            inner,
            gate,
            subscribe_delay,
            unsubscribe_delay,
        })
    }

    /// An engine on this broker and the memory presence manager.
    pub fn engine(self: &Arc<Self>) -> Engine {
        let presence = Arc::new(MemoryPresence::new());
        Engine::new(
            self.clone(),
            presence.clone(),
            vec![self.inner.clone() as Arc<dyn Lifecycle>, presence],
        )
    }

    /// Loses the publication of `channel` at `offset` on its way to the node (once).
    pub fn lose(&self, channel: &str, offset: u64) {
        self.gate.lose.lock().insert((channel.to_string(), offset));
    }

    /// The publications lost so far, as (channel, offset).
    pub fn lost(&self) -> Vec<(String, u64)> {
        self.gate.lost.lock().clone()
    }

    /// Whether the node's subscription to `channel` is in effect.
    pub fn is_live(&self, channel: &str) -> bool {
        self.gate.live.lock().contains(channel)
    }
}

#[async_trait]
impl Broker for RemoteLike {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.gate.handler.set(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        tokio::time::sleep(self.subscribe_delay).await;
        self.gate.live.lock().insert(channel.to_string());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        tokio::time::sleep(self.unsubscribe_delay).await;
        self.gate.live.lock().remove(channel);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, EngineError> {
        self.inner.publish(channel, publication, opts).await
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.inner.publish_join(channel, info).await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.inner.publish_leave(channel, info).await
    }

    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError> {
        self.inner.history(channel, filter).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        self.inner.remove_history(channel).await
    }
}

/// Joins the controllers of several nodes in one process, as a PUB/SUB channel joins
/// nodes: a message published by any of them reaches every node's handler (the nodes
/// pick out what is theirs). Messages go through their byte encoding, as on a network.
#[derive(Default)]
pub struct ControlBus {
    handlers: Mutex<Vec<Arc<dyn ControlHandler>>>,
}

impl ControlBus {
    /// An empty bus.
    pub fn new() -> Arc<ControlBus> {
        Arc::new(ControlBus::default())
    }

    /// A memory engine whose controller is on this bus.
    pub fn engine(self: &Arc<Self>) -> Engine {
        Engine::memory().with_control(Arc::new(BusController { bus: self.clone() }), None)
    }
}

/// One node's end of a [`ControlBus`].
pub struct BusController {
    bus: Arc<ControlBus>,
}

#[async_trait]
impl Controller for BusController {
    fn register_handler(&self, handler: Arc<dyn ControlHandler>) {
        self.bus.handlers.lock().push(handler);
    }

    async fn publish(&self, message: ControlMessage) -> Result<(), EngineError> {
        let bytes = message.encode();
        let handlers = self.bus.handlers.lock().clone();
        for h in handlers {
            let decoded = ControlMessage::decode(&bytes)
                .map_err(|e| EngineError::Unavailable(e.to_string()))?;
            h.handle_control(decoded);
        }
        Ok(())
    }
}
