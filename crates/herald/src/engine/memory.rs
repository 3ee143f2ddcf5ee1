//! The in-memory engine: one process, no external service. History streams live in a
//! sharded map; publications are delivered to the node's handler while the channel's
//! lock is held, which is what keeps every channel's deliveries in offset order.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerEventHandler, ClientInfo, EngineError, HistoryFilter, HistoryResult, Lifecycle,
    PresenceManager, Publication, PublishOptions, StreamPosition, now_millis,
};

const SHARDS: usize = 64;
/// How often expired publications, streams and presence entries are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a stream's position outlives its last publication when no meta TTL is set.
const DEFAULT_META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn shard_of(channel: &str) -> usize {
    let mut h = DefaultHasher::new();
    channel.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// A periodic sweep owned by one memory structure: started once, stopped by `close`.
#[derive(Default)]
struct Sweeper {
    stop: CancellationToken,
}

impl Sweeper {
    /// Calls `sweep` on `target` every [`SWEEP_INTERVAL`] until stopped or `target` is gone.
    fn start<T: Send + Sync + 'static>(&self, target: std::sync::Weak<T>, sweep: fn(&T)) {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => match target.upgrade() {
                        Some(t) => sweep(&t),
                        None => return,
                    },
                }
            }
        });
    }
}

fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..8].to_string()
}

struct Stream {
    epoch: String,
    top: u64,
    items: VecDeque<(Arc<Publication>, Instant)>,
    meta_expires: Instant,
}

impl Stream {
    fn new() -> Self {
        Stream {
            epoch: new_epoch(),
            top: 0,
            items: VecDeque::new(),
            meta_expires: Instant::now() + DEFAULT_META_TTL,
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        while self.items.front().is_some_and(|(_, exp)| *exp <= now) {
            self.items.pop_front();
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

type StreamMap = HashMap<String, Arc<Mutex<Stream>>>;

/// The memory broker: history streams and local delivery.
pub struct MemoryBroker {
    streams: Vec<RwLock<StreamMap>>,
    /// Serialises deliveries of channels without history, which have no stream to lock.
    order: Vec<Mutex<()>>,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    sweeper: Sweeper,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        MemoryBroker {
            streams: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            order: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            handler: OnceLock::new(),
            sweeper: Sweeper::default(),
        }
    }

    /// The channel's stream; a stream whose position expired (its meta TTL passed since
    /// the last publication) counts as absent even before the sweep drops it, so that
    /// the next read or publication starts a new epoch as a remote engine's would.
    fn stream(&self, channel: &str, create: bool) -> Option<Arc<Mutex<Stream>>> {
        let shard = &self.streams[shard_of(channel)];
        let now = Instant::now();
        if let Some(s) = shard.read().get(channel)
            && s.lock().meta_expires > now
        {
            return Some(s.clone());
        }
        if !create {
            return None;
        }
        let mut shard = shard.write();
        let stream = shard
            .entry(channel.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new())));
        if stream.lock().meta_expires <= now {
            *stream = Arc::new(Mutex::new(Stream::new()));
        }
        Some(stream.clone())
    }

    /// Drops expired publications and streams whose position expired. Called periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.streams {
            shard.write().retain(|_, stream| {
                let mut s = stream.lock();
                s.drop_expired(now);
                s.meta_expires > now
            });
        }
    }

    /// Number of streams kept (for metrics and tests).
    pub fn stream_count(&self) -> usize {
        self.streams.iter().map(|s| s.read().len()).sum()
    }
}

#[async_trait]
impl Lifecycle for MemoryBroker {
    fn start(self: Arc<Self>) {
        self.sweeper
            .start(Arc::downgrade(&self), MemoryBroker::sweep);
    }

    async fn close(&self) {
        self.sweeper.stop.cancel();
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    /// Delivery is a function call inside this process: nothing is lost on the way.
    fn reliable_delivery(&self) -> bool {
        true
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, EngineError> {
        publication.time = now_millis();
        if opts.history_size == 0 || opts.history_ttl.is_zero() {
            publication.offset = 0;
            let publication = Arc::new(publication);
            let position = StreamPosition::default();
            let _order = self.order[shard_of(channel)].lock();
            if let Some(h) = self.handler.get() {
                h.handle_publication(channel, publication, &position);
            }
            return Ok(position);
        }
        let stream = self
            .stream(channel, true)
            .ok_or_else(|| EngineError::Unavailable("stream vanished".into()))?;
        let mut s = stream.lock();
        let now = Instant::now();
        s.drop_expired(now);
        s.top += 1;
        publication.offset = s.top;
        let publication = Arc::new(publication);
        s.items
            .push_back((publication.clone(), now + opts.history_ttl));
        while s.items.len() > opts.history_size {
            s.items.pop_front();
        }
        let meta_ttl = if opts.history_meta_ttl.is_zero() {
            DEFAULT_META_TTL
        } else {
            opts.history_meta_ttl
        };
        s.meta_expires = now + meta_ttl.max(opts.history_ttl);
        let position = s.position();
        if let Some(h) = self.handler.get() {
            h.handle_publication(channel, publication, &position);
        }
        Ok(position)
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let _order = self.order[shard_of(channel)].lock();
        if let Some(h) = self.handler.get() {
            h.handle_join(channel, info);
        }
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let _order = self.order[shard_of(channel)].lock();
        if let Some(h) = self.handler.get() {
            h.handle_leave(channel, info);
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError> {
        // A read creates the stream so that an empty channel has a stable epoch that later
        // publications continue (a client may subscribe before the first publication).
        let stream = self
            .stream(channel, true)
            .ok_or_else(|| EngineError::Unavailable("stream vanished".into()))?;
        let mut s = stream.lock();
        s.drop_expired(Instant::now());
        let position = s.position();
        if let Some(since) = &filter.since
            && since.epoch != s.epoch
        {
            return Ok(HistoryResult {
                publications: Vec::new(),
                position,
            });
        }
        let limit = filter.limit.unwrap_or(usize::MAX);
        let after = filter.since.as_ref().map(|p| p.offset);
        let publications: Vec<Arc<Publication>> = if filter.reverse {
            s.items
                .iter()
                .rev()
                .map(|(p, _)| p)
                .filter(|p| after.is_none_or(|a| p.offset < a))
                .take(limit)
                .cloned()
                .collect()
        } else {
            s.items
                .iter()
                .map(|(p, _)| p)
                .filter(|p| after.is_none_or(|a| p.offset > a))
                .take(limit)
                .cloned()
                .collect()
        };
        Ok(HistoryResult {
            publications,
            position,
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        self.streams[shard_of(channel)].write().remove(channel);
        Ok(())
    }
}

type PresenceMap = HashMap<String, HashMap<String, (ClientInfo, Instant)>>;

/// The memory presence manager.
pub struct MemoryPresence {
    shards: Vec<Mutex<PresenceMap>>,
    sweeper: Sweeper,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryPresence {
    /// An empty presence table.
    pub fn new() -> Self {
        MemoryPresence {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            sweeper: Sweeper::default(),
        }
    }

    /// Drops expired entries, and channels left empty (entries of sessions that vanished
    /// without a remove would otherwise stay until the channel is read).
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            shard.lock().retain(|_, clients| {
                clients.retain(|_, (_, exp)| *exp > now);
                !clients.is_empty()
            });
        }
    }

    fn live(&self, channel: &str) -> Vec<ClientInfo> {
        let now = Instant::now();
        let mut shard = self.shards[shard_of(channel)].lock();
        let Some(clients) = shard.get_mut(channel) else {
            return Vec::new();
        };
        clients.retain(|_, (_, exp)| *exp > now);
        let out = clients.values().map(|(i, _)| i.clone()).collect();
        if clients.is_empty() {
            shard.remove(channel);
        }
        out
    }
}

#[async_trait]
impl Lifecycle for MemoryPresence {
    fn start(self: Arc<Self>) {
        self.sweeper
            .start(Arc::downgrade(&self), MemoryPresence::sweep);
    }

    async fn close(&self) {
        self.sweeper.stop.cancel();
    }
}

#[async_trait]
impl PresenceManager for MemoryPresence {
    async fn add(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        self.shards[shard_of(channel)]
            .lock()
            .entry(channel.to_string())
            .or_default()
            .insert(info.client.clone(), (info.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        let mut shard = self.shards[shard_of(channel)].lock();
        if let Some(clients) = shard.get_mut(channel) {
            clients.remove(client);
            if clients.is_empty() {
                shard.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        Ok(self
            .live(channel)
            .into_iter()
            .map(|i| (i.client.clone(), i))
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<(u32, u32), EngineError> {
        let clients = self.live(channel);
        let users: std::collections::HashSet<&str> =
            clients.iter().map(|c| c.user.as_str()).collect();
        Ok((clients.len() as u32, users.len() as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: usize) -> PublishOptions {
        PublishOptions {
            history_size: size,
            history_ttl: Duration::from_secs(60),
            ..Default::default()
        }
    }

    fn publication(n: u8) -> Publication {
        Publication {
            data: bytes::Bytes::from(vec![b'0' + n]),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn offsets_rise_by_one_and_history_is_trimmed() {
        let b = MemoryBroker::new();
        let mut last = StreamPosition::default();
        for n in 1..=5 {
            last = b.publish("ch", publication(n), &opts(3)).await.unwrap();
            assert_eq!(last.offset, n as u64);
        }
        let all = b.history("ch", &HistoryFilter::default()).await.unwrap();
        let offsets: Vec<u64> = all.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        assert_eq!(all.position, last);

        let since = HistoryFilter {
            since: Some(StreamPosition {
                offset: 3,
                epoch: last.epoch.clone(),
            }),
            ..Default::default()
        };
        let got = b.history("ch", &since).await.unwrap();
        assert_eq!(
            got.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );

        let rev = HistoryFilter {
            limit: Some(2),
            reverse: true,
            ..Default::default()
        };
        let got = b.history("ch", &rev).await.unwrap();
        assert_eq!(
            got.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![5, 4]
        );

        let wrong_epoch = HistoryFilter {
            since: Some(StreamPosition {
                offset: 1,
                epoch: "other".into(),
            }),
            ..Default::default()
        };
        assert!(
            b.history("ch", &wrong_epoch)
                .await
                .unwrap()
                .publications
                .is_empty()
        );
    }

    #[tokio::test]
    async fn removing_history_starts_a_new_epoch() {
        let b = MemoryBroker::new();
        let first = b.publish("ch", publication(1), &opts(10)).await.unwrap();
        b.remove_history("ch").await.unwrap();
        let second = b.publish("ch", publication(2), &opts(10)).await.unwrap();
        assert_ne!(first.epoch, second.epoch);
        assert_eq!(second.offset, 1);
    }

    #[tokio::test]
    async fn presence_counts_clients_and_users() {
        let p = MemoryPresence::new();
        let ttl = Duration::from_secs(60);
        for (user, client) in [("a", "1"), ("a", "2"), ("b", "3")] {
            let info = ClientInfo {
                user: user.into(),
                client: client.into(),
                ..Default::default()
            };
            p.add("ch", &info, ttl).await.unwrap();
        }
        assert_eq!(p.stats("ch").await.unwrap(), (3, 2));
        p.remove("ch", "2").await.unwrap();
        assert_eq!(p.presence("ch").await.unwrap().len(), 2);
    }
}
