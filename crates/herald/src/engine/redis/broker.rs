//! The Redis broker: publications through one Lua script per channel (offset, epoch,
//! stream append, expiries and PUBLISH in one atomic step and one round trip), history
//! read from Redis Streams, delivery to this node through a PUB/SUB connection per shard
//! that is subscribed to a channel only while the node has subscribers in it.
//!
//! Order: a channel lives on one shard, its publications are PUBLISHed by the script in
//! offset order, and one reader task per shard hands them to the node in the order Redis
//! sent them. Delivery between nodes is at most once (a PUB/SUB message sent while a
//! node's connection is down is lost); the offsets let clients see the gap and recover.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::Shards;
use super::shard::{PubSub, PubSubHandler};
use crate::engine::{
    Broker, BrokerEventHandler, ClientInfo, EngineError, HistoryFilter, HistoryResult, Lifecycle,
    Publication, PublishOptions, StreamPosition, now_millis,
};
use crate::protocol::proto;

/// How long a position created by a history read (of a channel never published to)
/// lives: as the memory engine's default.
const DEFAULT_META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// History reads in flight at once while catching up after a PUB/SUB reconnect.
const CATCH_UP_CONCURRENCY: usize = 16;

static PUBLISH: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/publish.lua")));
static HISTORY: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/history.lua")));

/// The Redis broker.
pub struct RedisBroker {
    shards: Arc<Shards>,
    /// One PUB/SUB side per shard, in shard order.
    pubsub: Vec<Arc<PubSub>>,
    /// Hands PUB/SUB messages to the node; shared with the reader tasks.
    delivery: Arc<Delivery>,
    /// Stops the reader tasks (on close, or when the broker is dropped).
    stop: CancellationToken,
}

/// What the reader tasks deliver through: the node's handler, and the last position
/// delivered in each channel with history. The positions let a reader skip a publication
/// it already delivered and, after its connection was lost, deliver from the stream what
/// was published meanwhile, so that a PUB/SUB outage costs subscribers of channels with
/// history nothing but delay.
struct Delivery {
    shards: Arc<Shards>,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    delivered: Mutex<HashMap<String, StreamPosition>>,
}

impl RedisBroker {
    pub(super) fn new(shards: Arc<Shards>) -> RedisBroker {
        let pubsub = shards
            .shards
            .iter()
            .map(|s| Arc::new(PubSub::new(s, "pubsub")))
            .collect();
        RedisBroker {
            delivery: Arc::new(Delivery {
                shards: shards.clone(),
                handler: OnceLock::new(),
                delivered: Mutex::new(HashMap::new()),
            }),
            shards,
            pubsub,
            stop: CancellationToken::new(),
        }
    }

    /// Channels this node is subscribed to in Redis, over every shard (for tests and
    /// metrics).
    pub fn subscribed_channels(&self) -> usize {
        self.pubsub.iter().map(|p| p.wanted_count()).sum()
    }

    fn pubsub_of(&self, channel: &str) -> &PubSub {
        &self.pubsub[self.shards.index_of(channel)]
    }

    async fn publish_raw(&self, channel: &str, payload: Vec<u8>) -> Result<(), EngineError> {
        self.shards
            .of(channel)
            .publish(self.shards.keys.pubsub(channel), payload)
            .await
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Delivery {
    /// Whether `position` in `channel` comes after what was delivered (and records it).
    fn advance(&self, channel: &str, position: &StreamPosition) -> bool {
        if position.offset == 0 {
            return true;
        }
        let mut delivered = self.delivered.lock();
        match delivered.get_mut(channel) {
            Some(last) if last.epoch == position.epoch && position.offset <= last.offset => false,
            Some(last) => {
                last.clone_from(position);
                true
            }
            None => {
                delivered.insert(channel.to_owned(), position.clone());
                true
            }
        }
    }

    /// Forgets `channel`'s position: the node is (re)subscribing from scratch.
    fn forget(&self, channel: &str) {
        self.delivered.lock().remove(channel);
    }

    /// Delivers what `channel` got since `last` from its stream: the publications after
    /// `last` in the same epoch, or the whole stream of a new epoch (the stream was lost:
    /// everything in it came after).
    async fn catch_up(
        &self,
        handler: &dyn BrokerEventHandler,
        channel: &str,
        last: StreamPosition,
    ) {
        let mut filter = HistoryFilter {
            since: Some(last.clone()),
            ..Default::default()
        };
        let mut result = read_history(&self.shards, channel, &filter).await;
        if let Ok(r) = &result
            && r.position.epoch != last.epoch
        {
            filter.since = None;
            result = read_history(&self.shards, channel, &filter).await;
        }
        let metrics = &self.shards.of(channel).metrics;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                metrics.catch_up_errors.inc();
                tracing::warn!(channel, error = %e, "catching up after a PUB/SUB reconnect failed");
                return;
            }
        };
        metrics.catch_ups.inc();
        let epoch = result.position.epoch;
        let mut n = 0;
        for publication in result.publications {
            let position = StreamPosition {
                offset: publication.offset,
                epoch: epoch.clone(),
            };
            if self.advance(channel, &position) {
                handler.handle_publication(channel, publication, &position);
                n += 1;
            }
        }
        metrics.catch_up_publications.inc_by(n);
        if n > 0 {
            tracing::info!(
                channel,
                publications = n,
                "delivered from the stream what a PUB/SUB outage missed"
            );
        }
    }
}

#[async_trait]
impl PubSubHandler for Delivery {
    fn message(&self, name: &[u8], payload: &[u8]) {
        let (Some(handler), Some(channel)) =
            (self.handler.get(), self.shards.keys.channel_of(name))
        else {
            return;
        };
        dispatch(self, handler.as_ref(), channel, payload);
    }

    async fn resubscribed(&self, channels: &[Vec<u8>]) {
        let Some(handler) = self.handler.get() else {
            return;
        };
        let behind: Vec<(String, StreamPosition)> = {
            let delivered = self.delivered.lock();
            channels
                .iter()
                .filter_map(|name| self.shards.keys.channel_of(name))
                .filter_map(|c| delivered.get(c).map(|p| (c.to_owned(), p.clone())))
                .collect()
        };
        // A few reads at a time: each channel's publications stay in order.
        futures_util::stream::iter(behind)
            .for_each_concurrent(CATCH_UP_CONCURRENCY, |(channel, last)| async move {
                self.catch_up(handler.as_ref(), &channel, last).await
            })
            .await;
    }
}

/// Decodes one PUB/SUB message and hands it to the node, skipping a publication already
/// delivered (by a catch-up).
fn dispatch(delivery: &Delivery, handler: &dyn BrokerEventHandler, channel: &str, payload: &[u8]) {
    let Some((&kind, rest)) = payload.split_first() else {
        return;
    };
    match kind {
        b'p' => match decode_publication_message(rest) {
            Some((publication, position)) => {
                if delivery.advance(channel, &position) {
                    handler.handle_publication(channel, Arc::new(publication), &position)
                }
            }
            None => tracing::warn!(channel, "undecodable publication from Redis"),
        },
        b'j' | b'l' => match proto::ClientInfo::decode(rest) {
            Ok(info) => {
                let info = client_info_from_proto(info);
                if kind == b'j' {
                    handler.handle_join(channel, &info)
                } else {
                    handler.handle_leave(channel, &info)
                }
            }
            Err(_) => tracing::warn!(channel, "undecodable join or leave from Redis"),
        },
        _ => tracing::warn!(channel, "unknown message from Redis"),
    }
}

/// `<offset>:<epoch>:<publication>` (the `p` already taken off).
fn decode_publication_message(rest: &[u8]) -> Option<(Publication, StreamPosition)> {
    let colon = rest.iter().position(|b| *b == b':')?;
    let offset: u64 = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let rest = &rest[colon + 1..];
    let colon = rest.iter().position(|b| *b == b':')?;
    let epoch = std::str::from_utf8(&rest[..colon]).ok()?.to_owned();
    let publication = decode_publication(&rest[colon + 1..], offset)?;
    Some((publication, StreamPosition { offset, epoch }))
}

fn encode_publication(publication: &Publication) -> Vec<u8> {
    proto::Publication {
        data: publication.data.clone(),
        info: publication.info.as_ref().map(ClientInfo::to_proto),
        tags: publication.tags.clone(),
        time: publication.time,
        ..Default::default()
    }
    .encode_to_vec()
}

fn decode_publication(bytes: &[u8], offset: u64) -> Option<Publication> {
    let p = proto::Publication::decode(bytes).ok()?;
    Some(Publication {
        data: p.data,
        info: p.info.map(client_info_from_proto),
        offset,
        tags: p.tags,
        time: p.time,
    })
}

pub(super) fn client_info_from_proto(info: proto::ClientInfo) -> ClientInfo {
    ClientInfo {
        user: info.user,
        client: info.client,
        conn_info: info.conn_info,
        chan_info: info.chan_info,
    }
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

fn corrupt(what: &str) -> EngineError {
    EngineError::Unavailable(format!("unexpected reply from Redis: {what}"))
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[id, [field, value, ...]]` entries of XRANGE into publications.
fn decode_entries(entries: &Value) -> Result<Vec<Arc<Publication>>, EngineError> {
    let Value::Array(entries) = entries else {
        return Err(corrupt("stream entries"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(corrupt("stream entry"));
        };
        let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
            return Err(corrupt("stream entry"));
        };
        let offset: u64 = std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.split('-').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("stream id"))?;
        let data = fields
            .chunks(2)
            .find(|kv| matches!(&kv[0], Value::BulkString(k) if k == b"d"))
            .and_then(|kv| match kv.get(1) {
                Some(Value::BulkString(d)) => Some(d.as_slice()),
                _ => None,
            })
            .ok_or_else(|| corrupt("stream entry without data"))?;
        let publication =
            decode_publication(data, offset).ok_or_else(|| corrupt("stored publication"))?;
        out.push(Arc::new(publication));
    }
    Ok(out)
}

/// One history read: the position and the publications `filter` selects.
async fn read_history(
    shards: &Shards,
    channel: &str,
    filter: &HistoryFilter,
) -> Result<HistoryResult, EngineError> {
    let after = filter.since.as_ref().map(|p| p.offset);
    // Reading newest first from "before offset 0" reads nothing.
    let read = filter.limit != Some(0) && !(filter.reverse && after == Some(0));
    let (first, last) = match (filter.reverse, after) {
        (false, None) => ("-".to_owned(), "+".to_owned()),
        (false, Some(a)) => (format!("{}-0", a + 1), "+".to_owned()),
        (true, None) => ("+".to_owned(), "-".to_owned()),
        (true, Some(a)) => (format!("{}-0", a.saturating_sub(1)), "-".to_owned()),
    };
    let keys = &shards.keys;
    let mut invocation = HISTORY.prepare_invoke();
    invocation
        .key(keys.stream(channel))
        .key(keys.meta(channel))
        .arg(new_epoch())
        .arg(millis(DEFAULT_META_TTL))
        .arg(if read { "1" } else { "0" })
        .arg(if filter.reverse { "1" } else { "0" })
        .arg(first)
        .arg(last)
        .arg(filter.limit.unwrap_or(0))
        .arg(if filter.since.is_some() { "1" } else { "0" })
        .arg(filter.since.as_ref().map_or("", |p| p.epoch.as_str()));
    let shard = shards.of(channel);
    let invocation = &invocation;
    let reply: Value = shard
        .run_idempotent(|mut conn| async move { invocation.invoke_async(&mut conn).await })
        .await?;
    let Value::Array(parts) = &reply else {
        return Err(corrupt("history"));
    };
    let [top, epoch, entries] = parts.as_slice() else {
        return Err(corrupt("history"));
    };
    Ok(HistoryResult {
        publications: decode_entries(entries)?,
        position: StreamPosition {
            offset: as_u64(top).ok_or_else(|| corrupt("history offset"))?,
            epoch: as_string(epoch).ok_or_else(|| corrupt("history epoch"))?,
        },
    })
}

#[async_trait]
impl Lifecycle for RedisBroker {
    fn start(self: Arc<Self>) {
        for pubsub in &self.pubsub {
            let delivery = self.delivery.clone() as Arc<dyn PubSubHandler>;
            tokio::spawn(pubsub.clone().run(delivery, self.stop.clone()));
        }
    }

    async fn close(&self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.delivery.handler.set(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.delivery.forget(channel);
        self.pubsub_of(channel)
            .subscribe(self.shards.keys.pubsub(channel))
            .await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        let result = self
            .pubsub_of(channel)
            .unsubscribe(&self.shards.keys.pubsub(channel))
            .await;
        self.delivery.forget(channel);
        result
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        opts: &PublishOptions,
    ) -> Result<StreamPosition, EngineError> {
        publication.time = now_millis();
        let encoded = encode_publication(&publication);
        if opts.history_size == 0 || opts.history_ttl.is_zero() {
            let mut payload = Vec::with_capacity(encoded.len() + 4);
            payload.extend_from_slice(b"p0::");
            payload.extend_from_slice(&encoded);
            self.publish_raw(channel, payload).await?;
            return Ok(StreamPosition::default());
        }
        let keys = &self.shards.keys;
        let meta_ttl = if opts.history_meta_ttl.is_zero() {
            DEFAULT_META_TTL
        } else {
            opts.history_meta_ttl
        }
        .max(opts.history_ttl);
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .key(keys.stream(channel))
            .key(keys.meta(channel))
            .arg(encoded)
            .arg(opts.history_size)
            .arg(millis(opts.history_ttl))
            .arg(keys.pubsub(channel))
            .arg(millis(meta_ttl))
            .arg(new_epoch());
        let shard = self.shards.of(channel);
        let reply: Value = async {
            let mut conn = shard.conn().await?;
            shard
                .run(async move { invocation.invoke_async(&mut conn).await })
                .await
        }
        .await
        .inspect_err(|_| {
            shard.metrics.publish_errors.inc();
        })?;
        let Value::Array(parts) = &reply else {
            return Err(corrupt("publish"));
        };
        match parts.as_slice() {
            [offset, epoch] => Ok(StreamPosition {
                offset: as_u64(offset).ok_or_else(|| corrupt("publish offset"))?,
                epoch: as_string(epoch).ok_or_else(|| corrupt("publish epoch"))?,
            }),
            _ => Err(corrupt("publish")),
        }
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let mut payload = vec![b'j'];
        info.to_proto().encode(&mut payload).ok();
        self.publish_raw(channel, payload).await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let mut payload = vec![b'l'];
        info.to_proto().encode(&mut payload).ok();
        self.publish_raw(channel, payload).await
    }

    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError> {
        read_history(&self.shards, channel, filter).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let keys = &self.shards.keys;
        let shard = self.shards.of(channel);
        let del = redis::cmd("DEL")
            .arg(keys.stream(channel))
            .arg(keys.meta(channel))
            .clone();
        let del = &del;
        shard
            .run_idempotent(|mut conn| async move { del.query_async::<i64>(&mut conn).await })
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn publication_messages_round_trip() {
        let publication = Publication {
            data: Bytes::from_static(b"{\"n\":1}"),
            info: Some(ClientInfo {
                user: "u".into(),
                client: "c".into(),
                ..Default::default()
            }),
            offset: 0,
            tags: [("k".to_string(), "v".to_string())].into(),
            time: 1234,
        };
        let mut msg = b"17:ab12:".to_vec();
        msg.extend_from_slice(&encode_publication(&publication));
        let (got, position) = decode_publication_message(&msg).unwrap();
        assert_eq!(
            position,
            StreamPosition {
                offset: 17,
                epoch: "ab12".into()
            }
        );
        assert_eq!(
            got,
            Publication {
                offset: 17,
                ..publication
            }
        );
        assert!(decode_publication_message(b"x:ab:").is_none());
    }
}
