//! One Redis instance (a shard): the multiplexed connection that carries commands and
//! scripts, and the PUB/SUB connection with its reader task.
//!
//! The command connection is a `redis` [`ConnectionManager`], made on first use (so that
//! building an engine needs no runtime) and reconnected by the crate after a failure.
//! Every request is bounded by `engine.redis.io_timeout`, so a request to an unreachable
//! Redis fails in bounded time instead of waiting for the reconnects.
//!
//! The PUB/SUB connection is owned by [`PubSub::run`], one task per shard: it connects,
//! subscribes every channel the node wants (the set that `subscribe` and `unsubscribe`
//! keep), hands each message to its callback in the order Redis sent it, pings to find a
//! dead connection, and after a loss reconnects with backoff and subscribes everything
//! again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{RedisAddress, RedisConfig, RedisTlsMaterial};
use crate::engine::EngineError;
use crate::metrics::{RedisConnLabel, RedisMetrics, RedisShardLabel};

/// How often an idle PUB/SUB connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// First and longest wait between two reconnect attempts of the PUB/SUB connection.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE command when subscribing everything again after a reconnect.
const RESUBSCRIBE_BATCH: usize = 512;

/// TLS to one kind of server (Redis servers, or Sentinels): `None` for plain TCP.
pub(super) type Tls = Option<Arc<TlsSetup>>;

/// What a TLS connection trusts and presents.
pub(super) struct TlsSetup {
    /// Root CA and client certificate, for the `redis` crate (rustls).
    certs: redis::TlsCertificates,
    /// `insecure_skip_verify`: no check of the server's certificate.
    insecure: bool,
}

impl TlsSetup {
    pub(super) fn new(material: &RedisTlsMaterial) -> TlsSetup {
        TlsSetup {
            certs: redis::TlsCertificates {
                client_tls: material
                    .client
                    .as_ref()
                    .map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                root_cert: material.server_ca.clone(),
            },
            insecure: material.insecure_skip_verify,
        }
    }
}

/// A client for `host:port`, over TLS when `tls` says so.
fn open_client(
    host: String,
    port: u16,
    tls: &Tls,
    settings: redis::RedisConnectionInfo,
) -> redis::RedisResult<redis::Client> {
    let addr = match tls {
        None => redis::ConnectionAddr::Tcp(host, port),
        Some(t) => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: t.insecure,
            tls_params: None,
        },
    };
    let info = redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(settings);
    match tls {
        None => redis::Client::open(info),
        Some(t) => redis::Client::build_with_tls(info, t.certs.clone()),
    }
}

/// One connection's state in the metrics: the `up` gauge, and a reconnect counted when
/// a connection that had been up and was lost works again.
pub(super) struct ConnState {
    up: Gauge,
    reconnects: Counter,
    /// 0: not tried yet; 1: up; 2: lost after being up; 3: failing, never up.
    state: std::sync::atomic::AtomicU8,
}

impl ConnState {
    fn new(metrics: &RedisMetrics, shard: &str, connection: &'static str) -> ConnState {
        let label = RedisConnLabel {
            shard: shard.to_owned(),
            connection,
        };
        let up = metrics.up.get_or_create(&label).clone();
        up.set(0);
        ConnState {
            up,
            reconnects: metrics.reconnects.get_or_create(&label).clone(),
            state: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// The connection works; returns whether this is a reconnect.
    fn up(&self) -> bool {
        self.up.set(1);
        let reconnect = self.state.swap(1, std::sync::atomic::Ordering::Relaxed) == 2;
        if reconnect {
            self.reconnects.inc();
        }
        reconnect
    }

    /// The connection is lost, or could not be made; returns whether it was up (or not
    /// tried) until now, so that a caller logs the change once, not every failure.
    fn down(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.up.set(0);
        let changed = self.state.fetch_update(Relaxed, Relaxed, |s| match s {
            0 => Some(3),
            1 => Some(2),
            _ => None,
        });
        changed.is_ok()
    }
}

/// One shard's handles into the engine's [`RedisMetrics`].
pub(super) struct ShardMetrics {
    /// The whole set (the PUB/SUB sides take their handles from it).
    all: RedisMetrics,
    /// This shard's address, the `shard` label.
    shard: String,
    /// The command connection.
    commands: ConnState,
    pub(super) publish_errors: Counter,
    pub(super) catch_ups: Counter,
    pub(super) catch_up_publications: Counter,
    pub(super) catch_up_errors: Counter,
}

impl ShardMetrics {
    fn new(all: &RedisMetrics, shard: String) -> ShardMetrics {
        let label = RedisShardLabel {
            shard: shard.clone(),
        };
        ShardMetrics {
            all: all.clone(),
            commands: ConnState::new(all, &shard, "commands"),
            publish_errors: all.publish_errors.get_or_create(&label).clone(),
            catch_ups: all.catch_ups.get_or_create(&label).clone(),
            catch_up_publications: all.catch_up_publications.get_or_create(&label).clone(),
            catch_up_errors: all.catch_up_errors.get_or_create(&label).clone(),
            shard,
        }
    }
}

/// One Redis instance, or one Redis Cluster (detected at the first connection, as
/// Centrifugo does: `INFO cluster` says `cluster_enabled:1`).
pub(super) struct Shard {
    /// Where it is, for logs (the password is never shown).
    pub(super) address: RedisAddress,
    /// The address and its `addr=` seeds, in order (Sentinels with `redis+sentinel://`).
    clients: Vec<redis::Client>,
    /// With Sentinel: the master's name and how to log in to it.
    sentinel: Option<Arc<SentinelTarget>>,
    /// Made on first use; dropped after a failure that may mean the master moved
    /// (Sentinel), so that the next request asks the Sentinels again.
    conn: Mutex<Option<Conn>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
    io_timeout: Duration,
    /// TLS to the Redis servers (the `addr=` seeds and the nodes of a Cluster too).
    tls: Tls,
    /// Connection states and error counts, exported by the node.
    pub(super) metrics: ShardMetrics,
}

/// The master a Sentinel setup is asked for.
pub(super) struct SentinelTarget {
    master_name: String,
    /// Database, user and password of the master.
    redis: redis::RedisConnectionInfo,
    /// TLS to the master (the Sentinels' own is in their clients).
    tls: Tls,
}

/// Asks the Sentinels in `sentinels`, in order, where the master is; a client for it.
async fn resolve_master(
    sentinels: &[redis::Client],
    target: &SentinelTarget,
    timeout: Duration,
) -> redis::RedisResult<redis::Client> {
    let mut last = None;
    for sentinel in sentinels {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let asked = async {
            let mut conn = sentinel
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&target.master_name)
                .query_async(&mut conn)
                .await?;
            addr.ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the Sentinel does not know this master",
                    target.master_name.clone(),
                ))
            })
        };
        match asked.await {
            Ok((host, port)) => {
                return open_client(host, port, &target.tls, target.redis.clone());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Client, "no Sentinel address"))
    }))
}

/// Whether `e` may mean that the master moved (Sentinel failover): the connection failed,
/// or the server became a replica.
fn master_may_have_moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code() == Some("READONLY")
}

/// The command connection: to one instance, or routed over a Redis Cluster by key slot
/// (a channel's keys share a slot through their hash tag, so each script runs on one
/// node). Cheap to clone: both are handles to shared multiplexed connections.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Shard {
    /// `tls` and `sentinel_tls` are the material of `engine.redis.tls` and
    /// `engine.redis.sentinel_tls`, used where `address` asks for TLS.
    pub(super) fn new(
        address: RedisAddress,
        config: &RedisConfig,
        tls: &RedisTlsMaterial,
        sentinel_tls: &RedisTlsMaterial,
        metrics: &RedisMetrics,
    ) -> Result<Shard, EngineError> {
        let server_tls: Tls = address.tls.then(|| Arc::new(TlsSetup::new(tls)));
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(address.db);
        if !address.user.is_empty() {
            redis_info = redis_info.set_username(&address.user);
        }
        if !address.password.is_empty() {
            redis_info = redis_info.set_password(&address.password);
        }
        let sentinel = address.sentinel.as_ref().map(|s| {
            Arc::new(SentinelTarget {
                master_name: s.master_name.clone(),
                redis: redis_info.clone(),
                tls: server_tls.clone(),
            })
        });
        // With Sentinel the listed addresses are Sentinels, with logins of their own.
        let listed_info = match &address.sentinel {
            Some(s) => {
                let mut info = redis::RedisConnectionInfo::default();
                if !s.user.is_empty() {
                    info = info.set_username(&s.user);
                }
                if !s.password.is_empty() {
                    info = info.set_password(&s.password);
                }
                info
            }
            None => redis_info,
        };
        let listed_tls: Tls = match &address.sentinel {
            Some(s) => s.tls.then(|| Arc::new(TlsSetup::new(sentinel_tls))),
            None => server_tls.clone(),
        };
        let hosts = std::iter::once((address.host.clone(), address.port))
            .chain(address.seeds.iter().cloned());
        let clients = hosts
            .map(|(host, port)| open_client(host, port, &listed_tls, listed_info.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Unavailable(format!("{address}: {e}")))?;
        let metrics = ShardMetrics::new(metrics, address.to_string());
        Ok(Shard {
            address,
            clients,
            sentinel,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            tls: server_tls,
            metrics,
        })
    }

    /// The command connection (a cheap clone of the shared multiplexed one). The first
    /// call finds out whether this is a Redis Cluster; until that succeeds (Redis is
    /// unreachable) every call tries again.
    pub(super) async fn conn(&self) -> Result<Conn, EngineError> {
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        tokio::time::timeout(self.io_timeout, async {
            let _one = self.connecting.lock().await;
            if let Some(c) = self.conn.lock().clone() {
                return Ok(c);
            }
            let c = self.connect().await?;
            *self.conn.lock() = Some(c.clone());
            Ok(c)
        })
        .await
        .map_err(|_| {
            EngineError::Unavailable(format!(
                "redis {}: no connection within {:?}",
                self.address, self.io_timeout
            ))
        })
        .flatten()
        .inspect_err(|e| self.connection_down(e))
    }

    /// The command connection failed: counted as down, logged when it was up.
    fn connection_down(&self, why: &dyn std::fmt::Display) {
        if self.metrics.commands.down() {
            tracing::warn!(redis = %self.address, error = %why, "redis command connection down");
        }
    }

    /// A request got its answer: the command connection is up.
    fn answered(&self) {
        if self.metrics.commands.up() {
            tracing::info!(redis = %self.address, "redis command connection back");
        }
    }

    /// After a failure: with Sentinel, forget the connection when the master may have
    /// moved, so that the next request asks the Sentinels again.
    fn failed(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            self.connection_down(e);
        }
        if master_may_have_moved(e) {
            self.timed_out();
        }
    }

    /// After a request got no answer in time: the connection counts as down, and with
    /// Sentinel the master may be gone.
    fn timed_out(&self) {
        self.connection_down(&format_args!("no answer within {:?}", self.io_timeout));
        if self.sentinel.is_some() {
            *self.conn.lock() = None;
        }
    }

    async fn connect(&self) -> Result<Conn, EngineError> {
        if let Some(target) = &self.sentinel {
            let master = resolve_master(&self.clients, target, self.connect_timeout)
                .await
                .map_err(|e| self.error(e))?;
            let addr = master.get_connection_info().addr().to_string();
            let manager = ConnectionManager::new_lazy_with_config(master, self.manager_config())
                .map_err(|e| self.error(e))?;
            tracing::info!(redis = %self.address, master = %addr, "master found through Sentinel");
            return Ok(Conn::Single(manager));
        }
        let mut last = None;
        for client in &self.clients {
            match self.cluster_enabled(client).await {
                Ok(false) => {
                    let manager = ConnectionManager::new_lazy_with_config(
                        client.clone(),
                        self.manager_config(),
                    )
                    .map_err(|e| self.error(e))?;
                    return Ok(Conn::Single(manager));
                }
                Ok(true) => {
                    let info = client.get_connection_info().redis_settings();
                    let mut builder = redis::cluster::ClusterClient::builder(
                        self.clients.iter().map(|c| c.get_connection_info().clone()),
                    )
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.io_timeout)
                    .retries(2);
                    if let Some(tls) = &self.tls {
                        // The nodes the cluster names are reached with the same TLS.
                        builder = builder
                            .tls(if tls.insecure {
                                redis::TlsMode::Insecure
                            } else {
                                redis::TlsMode::Secure
                            })
                            .certs(tls.certs.clone());
                    }
                    if let Some(user) = info.username() {
                        builder = builder.username(user);
                    }
                    if let Some(password) = info.password() {
                        builder = builder.password(password);
                    }
                    let cluster = builder.build().map_err(|e| self.error(e))?;
                    let conn = cluster
                        .get_async_connection()
                        .await
                        .map_err(|e| self.error(e))?;
                    tracing::info!(redis = %self.address, "Redis Cluster detected");
                    return Ok(Conn::Cluster(conn));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || EngineError::Unavailable(format!("redis {}: no address", self.address)),
            |e| self.error(e),
        ))
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.io_timeout))
            // Few retries inside the crate: the request timeout bounds the wait anyway,
            // and the next request starts a new attempt.
            .set_number_of_retries(1)
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX)
    }

    /// Asks one node whether it is part of a Redis Cluster.
    async fn cluster_enabled(&self, client: &redis::Client) -> redis::RedisResult<bool> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.io_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await?;
        Ok(info.contains("cluster_enabled:1"))
    }

    /// PUBLISHes `payload` on the PUB/SUB channel `name` of this shard (one request, not
    /// retried: a publish that may have reached Redis must not be sent twice).
    pub(super) async fn publish(&self, name: Vec<u8>, payload: Vec<u8>) -> Result<(), EngineError> {
        let published = async {
            let mut conn = self.conn().await?;
            self.run(async move {
                redis::cmd("PUBLISH")
                    .arg(name)
                    .arg(payload)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
        };
        published.await.map(|_| ()).inspect_err(|_| {
            self.metrics.publish_errors.inc();
        })
    }

    /// Runs one request against this shard, bounded by `io_timeout`.
    pub(super) async fn run<T, F>(&self, request: F) -> Result<T, EngineError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.io_timeout, request).await {
            Ok(Ok(v)) => {
                self.answered();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.failed(&e);
                Err(self.error(e))
            }
            Err(_) => {
                self.timed_out();
                Err(EngineError::Unavailable(format!(
                    "redis {}: no answer within {:?}",
                    self.address, self.io_timeout
                )))
            }
        }
    }

    /// Runs a request that may safely run twice (a read, an idempotent write), retrying
    /// it after a dropped or refused connection until `io_timeout` is spent: the first
    /// request after Redis came back often meets the connection that died, and is what
    /// makes the connection manager reconnect.
    pub(super) async fn run_idempotent<T, F, Fut>(&self, mut request: F) -> Result<T, EngineError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.io_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let conn = self.conn().await?;
            let attempt = tokio::time::timeout_at(deadline, request(conn)).await;
            match attempt {
                Ok(Ok(v)) => {
                    self.answered();
                    return Ok(v);
                }
                Ok(Err(e))
                    if (e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal())
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    self.failed(&e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Ok(Err(e)) => {
                    self.failed(&e);
                    return Err(self.error(e));
                }
                Err(_) => {
                    self.timed_out();
                    return Err(EngineError::Unavailable(format!(
                        "redis {}: no answer within {:?}",
                        self.address, self.io_timeout
                    )));
                }
            }
        }
    }

    fn error(&self, e: redis::RedisError) -> EngineError {
        EngineError::Unavailable(format!("redis {}: {e}", self.address))
    }
}

/// What the PUB/SUB reader hands to its owner. Both are called from the reader task, one
/// call at a time, so a channel's messages reach `message` in the order Redis sent them.
#[async_trait::async_trait]
pub(super) trait PubSubHandler: Send + Sync {
    /// One message of a subscribed channel. Must not block.
    fn message(&self, channel: &[u8], payload: &[u8]);
    /// The connection was lost and a new one subscribed `channels` again; messages sent
    /// meanwhile are lost. Called before any message of the new connection.
    async fn resubscribed(&self, channels: &[Vec<u8>]);
}

/// The PUB/SUB side of one shard: the channels the node wants and the live connection.
pub(super) struct PubSub {
    address: String,
    /// Where to connect: the address, then its seeds (in a Redis Cluster any node
    /// carries every node's PUBLISH, so the first one that answers will do).
    clients: Vec<redis::Client>,
    /// With Sentinel, `clients` are Sentinels to ask for the master.
    sentinel: Option<Arc<SentinelTarget>>,
    /// Which of `clients` the next connection tries.
    next: std::sync::atomic::AtomicUsize,
    connect_timeout: Duration,
    io_timeout: Duration,
    state: Mutex<SubState>,
    /// `true` while a connection is live; `subscribe` waits on it for a while.
    connected: watch::Sender<bool>,
    /// The connection's state in the metrics.
    conn_state: ConnState,
    /// Resubscribes after a reconnect, and the channels they subscribed again.
    resubscribes: Counter,
    resubscribed_channels: Counter,
}

#[derive(Default)]
struct SubState {
    /// Redis channels the node wants. Only changed while a connection is live, so a
    /// reconnect's snapshot plus the changes after it is always the whole truth.
    wanted: HashSet<Vec<u8>>,
    /// The live connection's command side; `None` while disconnected.
    sink: Option<PubSubSink>,
}

impl PubSub {
    /// The PUB/SUB side of `shard`; `connection` names it in the metrics (`pubsub` for
    /// channels, `control` for the control channel).
    pub(super) fn new(shard: &Shard, connection: &'static str) -> PubSub {
        let metrics = &shard.metrics;
        let label = RedisShardLabel {
            shard: metrics.shard.clone(),
        };
        let (resubscribes, resubscribed_channels) = if connection == "pubsub" {
            (
                metrics.all.resubscribes.get_or_create(&label).clone(),
                metrics
                    .all
                    .resubscribed_channels
                    .get_or_create(&label)
                    .clone(),
            )
        } else {
            // The control channel is one channel, counted by its reconnects.
            (Counter::default(), Counter::default())
        };
        PubSub {
            conn_state: ConnState::new(&metrics.all, &metrics.shard, connection),
            resubscribes,
            resubscribed_channels,
            address: shard.address.to_string(),
            clients: shard.clients.clone(),
            sentinel: shard.sentinel.clone(),
            next: std::sync::atomic::AtomicUsize::new(0),
            connect_timeout: shard.connect_timeout,
            io_timeout: shard.io_timeout,
            state: Mutex::new(SubState::default()),
            connected: watch::channel(false).0,
        }
    }

    /// Subscribes the node to `channel`; returns once Redis confirmed the SUBSCRIBE, so
    /// every message published after the return reaches the callback. Waits up to
    /// `io_timeout` for a connection when there is none.
    pub(super) async fn subscribe(&self, channel: Vec<u8>) -> Result<(), EngineError> {
        let mut sink = self.live_sink(&channel).await?;
        match tokio::time::timeout(self.io_timeout, sink.subscribe(&channel)).await {
            Ok(Ok(())) => Ok(()),
            failed => {
                // The reader will replace the connection; do not keep a channel the
                // caller was told is not subscribed.
                self.state.lock().wanted.remove(&channel);
                Err(EngineError::Unavailable(match failed {
                    Ok(Err(e)) => format!("redis {}: subscribe: {e}", self.address),
                    _ => format!(
                        "redis {}: subscribe: no answer within {:?}",
                        self.address, self.io_timeout
                    ),
                }))
            }
        }
    }

    async fn live_sink(&self, channel: &[u8]) -> Result<PubSubSink, EngineError> {
        let mut connected = self.connected.subscribe();
        let deadline = tokio::time::Instant::now() + self.io_timeout;
        loop {
            {
                let mut state = self.state.lock();
                if let Some(sink) = &state.sink {
                    let sink = sink.clone();
                    state.wanted.insert(channel.to_vec());
                    return Ok(sink);
                }
            }
            let waited = tokio::time::timeout_at(deadline, connected.wait_for(|c| *c)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(EngineError::Unavailable(format!(
                    "redis {}: PUB/SUB connection is down",
                    self.address
                )));
            }
        }
    }

    /// Unsubscribes the node from `channel`. With no connection there is nothing to do:
    /// the next connection subscribes only what is wanted.
    pub(super) async fn unsubscribe(&self, channel: &[u8]) -> Result<(), EngineError> {
        let sink = {
            let mut state = self.state.lock();
            state.wanted.remove(channel);
            state.sink.clone()
        };
        let Some(mut sink) = sink else {
            return Ok(());
        };
        match tokio::time::timeout(self.io_timeout, sink.unsubscribe(channel)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Unavailable(format!(
                "redis {}: unsubscribe: {e}",
                self.address
            ))),
            Err(_) => Err(EngineError::Unavailable(format!(
                "redis {}: unsubscribe: no answer within {:?}",
                self.address, self.io_timeout
            ))),
        }
    }

    /// Number of channels wanted (for tests and metrics).
    pub(super) fn wanted_count(&self) -> usize {
        self.state.lock().wanted.len()
    }

    /// Keeps a PUB/SUB connection up until `stop`: connects, subscribes what is wanted,
    /// delivers messages, reconnects with backoff after a loss.
    pub(super) async fn run(
        self: Arc<Self>,
        handler: Arc<dyn PubSubHandler>,
        stop: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut was_connected = false;
        loop {
            let session = self.session(handler.as_ref(), was_connected, &stop);
            match session.await {
                Session::Stopped => break,
                Session::Lost(why) => {
                    self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(redis = %self.address, error = %why, "redis PUB/SUB connection lost; reconnecting");
                    was_connected = true;
                    backoff = BACKOFF_MIN;
                }
                Session::Failed(why) => {
                    let _ = self.conn_state.down();
                    self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(redis = %self.address, error = %why, retry_in = ?backoff, "redis PUB/SUB connection failed");
                }
            }
            let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.state.lock().sink = None;
        self.connected.send_replace(false);
    }

    async fn session(
        &self,
        handler: &dyn PubSubHandler,
        was_connected: bool,
        stop: &CancellationToken,
    ) -> Session {
        let client = match &self.sentinel {
            Some(target) => {
                match resolve_master(&self.clients, target, self.connect_timeout).await {
                    Ok(master) => master,
                    Err(e) => return Session::Failed(format!("asking the Sentinels: {e}")),
                }
            }
            None => {
                let i = self.next.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len();
                self.clients[i].clone()
            }
        };
        let connect = tokio::time::timeout(self.connect_timeout, client.get_async_pubsub());
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return Session::Stopped,
            r = connect => match r {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Session::Failed(e.to_string()),
                Err(_) => return Session::Failed(format!("no connection within {:?}", self.connect_timeout)),
            },
        };
        let (mut sink, mut stream) = pubsub.split();

        // Subscribe everything wanted before going live: `subscribe` calls wait meanwhile,
        // so the snapshot cannot miss a channel added later.
        let snapshot: Vec<Vec<u8>> = self.state.lock().wanted.iter().cloned().collect();
        for batch in snapshot.chunks(RESUBSCRIBE_BATCH) {
            match tokio::time::timeout(self.io_timeout, sink.subscribe(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Session::Failed(format!("resubscribe: {e}")),
                Err(_) => return Session::Failed("resubscribe: no answer".to_owned()),
            }
        }
        let stale: Vec<Vec<u8>> = {
            let mut state = self.state.lock();
            state.sink = Some(sink.clone());
            // Unsubscribed while disconnected, after the snapshot was taken.
            snapshot
                .iter()
                .filter(|c| !state.wanted.contains(*c))
                .cloned()
                .collect()
        };
        self.connected.send_replace(true);
        self.conn_state.up();
        if !stale.is_empty() {
            let _ = tokio::time::timeout(self.io_timeout, sink.unsubscribe(&stale)).await;
        }
        if was_connected {
            self.resubscribes.inc();
            self.resubscribed_channels.inc_by(snapshot.len() as u64);
            tracing::info!(redis = %self.address, channels = snapshot.len(), "redis PUB/SUB reconnected; channels subscribed again");
            // Messages of the new connection wait in its buffer meanwhile.
            tokio::select! {
                _ = stop.cancelled() => return Session::Stopped,
                _ = handler.resubscribed(&snapshot) => {}
            }
        } else {
            tracing::info!(redis = %self.address, "redis PUB/SUB connected");
        }

        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let outcome = loop {
            tokio::select! {
                _ = stop.cancelled() => break Session::Stopped,
                msg = stream.next() => match msg {
                    Some(msg) => handler.message(msg.get_channel_name().as_bytes(), msg.get_payload_bytes()),
                    None => break Session::Lost("connection closed".to_owned()),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(self.io_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break Session::Lost(format!("no answer to PING within {:?}", self.io_timeout));
                    }
                }
            }
        };
        self.state.lock().sink = None;
        self.connected.send_replace(false);
        if !matches!(outcome, Session::Stopped) {
            let _ = self.conn_state.down();
        }
        outcome
    }
}

enum Session {
    /// Asked to stop.
    Stopped,
    /// A live connection was lost.
    Lost(String),
    /// No connection could be made.
    Failed(String),
}
