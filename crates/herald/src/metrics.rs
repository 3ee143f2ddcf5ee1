//! Prometheus metrics: one registry per node, no global recorder. Counters are bumped once
//! per batch or publication, never per byte.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label: the transport name (`websocket`, `sse`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// Transport name.
    pub transport: &'static str,
}

/// Label: the HTTP version a WebSocket was opened on (`1.1`: Upgrade, `2`: RFC 8441 extended CONNECT).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpVersionLabel {
    /// `1.1` or `2`.
    pub http: &'static str,
}

/// Label: a disconnect code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Disconnect code.
    pub code: u32,
}

/// Label: a client command method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// Method name.
    pub method: &'static str,
}

/// Labels of [`Metrics::limited`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// Which limit refused it.
    pub limit: &'static str,
}

/// Labels of [`Metrics::proxy_calls`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabel {
    /// The hook: connect, refresh, subscribe, publish, sub_refresh, rpc.
    pub hook: &'static str,
    /// `accepted`, `refused` (an error or disconnect from the backend) or `failed` (no
    /// usable answer: down, slow, non-200, malformed).
    pub result: &'static str,
}

/// Label: how a gap in a subscriber's stream was found.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GapLabel {
    /// `delivery` (an offset jump or another epoch among delivered publications) or
    /// `position_check` (the periodic comparison with the stream top).
    pub detected_by: &'static str,
}

impl GapLabel {
    /// Found among delivered publications.
    pub const DELIVERY: GapLabel = GapLabel {
        detected_by: "delivery",
    };
    /// Found by the periodic position check.
    pub const POSITION_CHECK: GapLabel = GapLabel {
        detected_by: "position_check",
    };
}

/// Label: one Redis instance (an entry of `engine.redis.address`, without its password).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisShardLabel {
    /// The address, e.g. `redis://127.0.0.1:6379/0`.
    pub shard: String,
}

/// Label: one connection of a Redis instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisConnLabel {
    /// The address, e.g. `redis://127.0.0.1:6379/0`.
    pub shard: String,
    /// `commands` (scripts, history, presence, PUBLISH), `pubsub` (the channels' PUB/SUB
    /// reader) or `control` (the node-to-node control channel's PUB/SUB reader, on the
    /// first instance).
    pub connection: &'static str,
}

/// The Redis engine's metrics: the state of its connections and what it did to get over
/// their failures. Made by the engine (cheap clones share the values) and registered by
/// the node with [`Metrics::register_redis`].
#[derive(Clone, Debug, Default)]
pub struct RedisMetrics {
    /// 1 while a connection is up, 0 while it is down (commands: 0 until the first
    /// request, then the outcome of the last one).
    pub up: Family<RedisConnLabel, Gauge>,
    /// Connections made again after one was lost.
    pub reconnects: Family<RedisConnLabel, Counter>,
    /// PUB/SUB reconnects after which every wanted channel was subscribed again.
    pub resubscribes: Family<RedisShardLabel, Counter>,
    /// Channels subscribed again by those resubscribes.
    pub resubscribed_channels: Family<RedisShardLabel, Counter>,
    /// Channels caught up from their stream after a PUB/SUB outage.
    pub catch_ups: Family<RedisShardLabel, Counter>,
    /// Publications delivered by those catch-ups (missed by PUB/SUB, read from the stream).
    pub catch_up_publications: Family<RedisShardLabel, Counter>,
    /// Catch-ups that failed (the stream could not be read; subscribers recover through
    /// gap detection).
    pub catch_up_errors: Family<RedisShardLabel, Counter>,
    /// Publishes (publications, join and leave events, control messages) that failed.
    pub publish_errors: Family<RedisShardLabel, Counter>,
}

/// Every metric Herald exports.
pub struct Metrics {
    registry: Registry,
    /// Open connections per transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Messages written to clients per transport.
    pub messages_sent: Family<TransportLabel, Counter>,
    /// Messages (commands) received from clients per transport.
    pub messages_received: Family<TransportLabel, Counter>,
    /// Commands by method.
    pub commands: Family<MethodLabel, Counter>,
    /// Disconnects by code.
    pub disconnects: Family<CodeLabel, Counter>,
    /// WebSocket handshakes accepted, by HTTP version.
    pub websocket_handshakes: Family<HttpVersionLabel, Counter>,
    /// Publications accepted.
    pub publications: Counter,
    /// Publications handed to local subscriber queues.
    pub deliveries: Counter,
    /// Subscriptions found to have missed publications (each made to recover).
    pub gaps: Family<GapLabel, Counter>,
    /// Publish latency (engine append and local fan-out), seconds.
    pub publish_latency: Histogram,
    /// Messages written per socket write (write coalescing).
    pub batch_size: Histogram,
    /// Authenticated clients.
    pub clients: Gauge,
    /// Subscriptions.
    pub subscriptions: Gauge,
    /// Channels with subscribers.
    pub channels: Gauge,
    /// Bytes waiting in client queues (sampled).
    pub queued_bytes: Gauge,
    /// Proxy hook calls by hook and result.
    pub proxy_calls: Family<ProxyLabel, Counter>,
    /// Actions refused by a limit, by limit.
    pub limited: Family<LimitLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `herald_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let m = Metrics {
            connections: Family::default(),
            messages_sent: Family::default(),
            messages_received: Family::default(),
            commands: Family::default(),
            disconnects: Family::default(),
            websocket_handshakes: Family::default(),
            publications: Counter::default(),
            deliveries: Counter::default(),
            gaps: Family::default(),
            publish_latency: Histogram::new(exponential_buckets(0.00001, 4.0, 10)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            clients: Gauge::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            queued_bytes: Gauge::default(),
            proxy_calls: Family::default(),
            limited: Family::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open connections", m.connections.clone());
        registry.register(
            "messages_sent",
            "Messages sent to clients",
            m.messages_sent.clone(),
        );
        registry.register(
            "messages_received",
            "Messages received from clients",
            m.messages_received.clone(),
        );
        registry.register("commands", "Client commands by method", m.commands.clone());
        registry.register("disconnects", "Disconnects by code", m.disconnects.clone());
        registry.register(
            "websocket_handshakes",
            "WebSocket handshakes accepted, by HTTP version (2: RFC 8441 extended CONNECT)",
            m.websocket_handshakes.clone(),
        );
        registry.register(
            "publications",
            "Publications accepted",
            m.publications.clone(),
        );
        registry.register(
            "deliveries",
            "Publications queued to local subscribers",
            m.deliveries.clone(),
        );
        registry.register(
            "gaps_detected",
            "Subscriptions that missed publications and were made to recover",
            m.gaps.clone(),
        );
        registry.register(
            "publish_latency_seconds",
            "Publish latency",
            m.publish_latency.clone(),
        );
        registry.register(
            "write_batch_messages",
            "Messages per socket write",
            m.batch_size.clone(),
        );
        registry.register("clients", "Authenticated clients", m.clients.clone());
        registry.register("subscriptions", "Subscriptions", m.subscriptions.clone());
        registry.register("channels", "Channels with subscribers", m.channels.clone());
        registry.register(
            "queued_bytes",
            "Bytes waiting in client queues",
            m.queued_bytes.clone(),
        );
        registry.register(
            "limited",
            "Actions refused by a limit: connect (connection_rate_limit), connection_limit, user_connection_limit, command, publication",
            m.limited.clone(),
        );
        registry.register(
            "proxy_calls",
            "Proxy hook calls to the backend, by hook and result",
            m.proxy_calls.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one action refused by `limit`.
    pub fn rate_limited(&self, limit: &'static str) {
        self.limited.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Counts one proxy call by its answer.
    pub fn proxy_call(
        &self,
        hook: &'static str,
        answer: &Result<crate::proxy::Outcome, crate::proxy::ProxyError>,
    ) {
        let result = match answer {
            Ok(crate::proxy::Outcome::Accept(_)) => "accepted",
            Ok(_) => "refused",
            Err(_) => "failed",
        };
        self.proxy_calls
            .get_or_create(&ProxyLabel { hook, result })
            .inc();
    }

    /// Adds the Redis engine's metrics (`herald_redis_*`).
    pub fn register_redis(&mut self, m: &RedisMetrics) {
        let r = &mut self.registry;
        r.register(
            "redis_up",
            "Whether a Redis connection is up (1) or down (0)",
            m.up.clone(),
        );
        r.register(
            "redis_reconnects",
            "Redis connections made again after a loss",
            m.reconnects.clone(),
        );
        r.register(
            "redis_resubscribes",
            "PUB/SUB reconnects that subscribed every channel again",
            m.resubscribes.clone(),
        );
        r.register(
            "redis_resubscribed_channels",
            "Channels subscribed again after PUB/SUB reconnects",
            m.resubscribed_channels.clone(),
        );
        r.register(
            "redis_catch_ups",
            "Channels caught up from their stream after a PUB/SUB outage",
            m.catch_ups.clone(),
        );
        r.register(
            "redis_catch_up_publications",
            "Publications a PUB/SUB outage missed, delivered from the stream",
            m.catch_up_publications.clone(),
        );
        r.register(
            "redis_catch_up_errors",
            "Catch-ups after a PUB/SUB outage that could not read the stream",
            m.catch_up_errors.clone(),
        );
        r.register(
            "redis_publish_errors",
            "Publishes to Redis that failed",
            m.publish_errors.clone(),
        );
    }

    /// Counts `n` subscriptions found to have missed publications.
    pub fn gaps_detected(&self, how: &GapLabel, n: usize) {
        if n > 0 {
            self.gaps.get_or_create(how).inc_by(n as u64);
        }
    }

    /// Counts one subscription found to have missed publications.
    pub fn gap_detected(&self, how: GapLabel) {
        self.gaps_detected(&how, 1);
    }

    /// Refreshes the sampled gauges from the hub.
    pub fn update_gauges(&self, hub: &crate::hub::Hub) {
        self.clients.set(hub.num_clients() as i64);
        self.subscriptions.set(hub.num_subscriptions() as i64);
        self.channels.set(hub.num_channels() as i64);
        let queued: usize = hub.all_clients().iter().map(|c| c.queue.len_bytes()).sum();
        self.queued_bytes.set(queued as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
