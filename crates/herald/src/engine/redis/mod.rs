//! The Redis engine: several Herald nodes on one Redis (or Redis-compatible store) act as
//! one server. [`RedisBroker`] moves publications, join and leave events between nodes over
//! Redis PUB/SUB and keeps history in Redis Streams; [`RedisPresence`] keeps presence in
//! Redis. Both spread channels over the configured instances (`Shards`).
//!
//! # Keys (`P` is `engine.redis.prefix`, `C` the channel)
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P.stream.{C}` | stream | publications; entry id `<offset>-0`, field `d` the encoded publication |
//! | `P.meta.{C}` | hash | `e` the stream's epoch, `s` its top offset |
//! | `P.presence.data.{C}` | hash | client id → encoded client info |
//! | `P.presence.expire.{C}` | sorted set | client id → expiry time (ms, Redis clock) |
//! | `P.client.C` | PUB/SUB channel | the channel's events for the nodes subscribed to it |
//! | `P.control` | PUB/SUB channel (first instance) | node-to-node control messages ([`RedisController`]) |
//!
//! The channel sits in a hash tag (`{C}`), so that a channel's keys share a Redis Cluster
//! slot and one script may touch them all. PUB/SUB payloads are `p<offset>:<epoch>:<pub>`
//! for a publication (offset 0 and an empty epoch without history), `j<info>` for a join
//! and `l<info>` for a leave, where `<pub>` and `<info>` are the Protobuf encodings of the
//! client protocol's `Publication` (without its offset) and `ClientInfo`.
//!
//! # Shards
//!
//! Several `engine.redis.address` entries are independent instances; a channel lives on
//! the one that jump consistent hashing of its name picks, so adding an instance moves
//! about `1/n` of the channels. An entry may be a Redis Cluster (detected at the first
//! connection): commands are then routed by slot, and PUB/SUB uses one connection to any
//! of its nodes, since classic PUB/SUB reaches every node of a cluster.
//! An entry may also name Sentinels (`redis+sentinel://`): the master is asked of them at
//! the first connection and again after a failure that may mean a failover.

mod broker;
mod control;
mod presence;
mod shard;

use std::sync::Arc;

pub use broker::RedisBroker;
pub use control::RedisController;
pub use presence::RedisPresence;

use super::{Engine, EngineError, Lifecycle};
use crate::config::RedisConfig;
use crate::metrics::RedisMetrics;
use shard::Shard;

/// Builds the Redis engine from `engine.redis.*`. Connects nothing: connections are made
/// when the engine starts or on first use.
pub fn build(config: &RedisConfig) -> Result<Engine, EngineError> {
    let metrics = RedisMetrics::default();
    let shards = Arc::new(Shards::new(config, &metrics)?);
    let broker = Arc::new(RedisBroker::new(shards.clone()));
    let control = Arc::new(RedisController::new(shards.clone()));
    let presence = Arc::new(RedisPresence::new(shards));
    Ok(
        Engine::new(broker.clone(), presence, vec![broker as Arc<dyn Lifecycle>])
            .with_control(control.clone(), Some(control as Arc<dyn Lifecycle>))
            .with_redis_metrics(metrics),
    )
}

/// The Redis instances of `engine.redis.address` and the key names on them.
pub(crate) struct Shards {
    shards: Vec<Shard>,
    keys: Keys,
}

impl Shards {
    fn new(config: &RedisConfig, metrics: &RedisMetrics) -> Result<Shards, EngineError> {
        let addresses = config.shards().map_err(EngineError::Unavailable)?;
        let material = |tls: &crate::config::RedisTlsConfig, section: &str| {
            tls.material(section)
                .map_err(|e| EngineError::Unavailable(e.to_string()))
        };
        let tls = material(&config.tls, "engine.redis.tls")?;
        let sentinel_tls = material(&config.sentinel_tls, "engine.redis.sentinel_tls")?;
        let shards = addresses
            .into_iter()
            .map(|a| Shard::new(a, config, &tls, &sentinel_tls, metrics))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Shards {
            shards,
            keys: Keys {
                prefix: config.prefix.clone(),
            },
        })
    }

    /// The instance that holds `channel`.
    fn of(&self, channel: &str) -> &Shard {
        &self.shards[self.index_of(channel)]
    }

    /// The index of that instance in `engine.redis.address`.
    fn index_of(&self, channel: &str) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        jump_hash(fnv1a(channel.as_bytes()), self.shards.len())
    }
}

/// Key and PUB/SUB channel names.
struct Keys {
    prefix: String,
}

impl Keys {
    fn stream(&self, channel: &str) -> String {
        format!("{}.stream.{{{channel}}}", self.prefix)
    }

    fn meta(&self, channel: &str) -> String {
        format!("{}.meta.{{{channel}}}", self.prefix)
    }

    fn presence_data(&self, channel: &str) -> String {
        format!("{}.presence.data.{{{channel}}}", self.prefix)
    }

    fn presence_expire(&self, channel: &str) -> String {
        format!("{}.presence.expire.{{{channel}}}", self.prefix)
    }

    fn pubsub(&self, channel: &str) -> Vec<u8> {
        format!("{}.client.{channel}", self.prefix).into_bytes()
    }

    /// The PUB/SUB channel of node-to-node control messages (on the first instance).
    fn control(&self) -> Vec<u8> {
        format!("{}.control", self.prefix).into_bytes()
    }

    /// The Herald channel of a PUB/SUB channel name, if it is one of ours.
    fn channel_of<'a>(&self, pubsub: &'a [u8]) -> Option<&'a str> {
        let rest = pubsub.strip_prefix(self.prefix.as_bytes())?;
        let rest = rest.strip_prefix(b".client.")?;
        std::str::from_utf8(rest).ok()
    }
}

/// FNV-1a, 64 bits: a stable hash of channel names (the same on every node and build,
/// unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping and Veach, 2014): a bucket in `0..buckets` for `key`;
/// going from n to n+1 buckets moves only the keys that land in the new one.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_is_stable_and_moves_few_keys() {
        let names: Vec<String> = (0..10_000).map(|i| format!("chat:{i}")).collect();
        let at = |n: usize| -> Vec<usize> {
            names
                .iter()
                .map(|c| jump_hash(fnv1a(c.as_bytes()), n))
                .collect()
        };
        assert!(at(1).iter().all(|b| *b == 0));
        let three = at(3);
        let four = at(4);
        assert!(three.iter().all(|b| *b < 3));
        // Every key that moves, moves to the new bucket; about a quarter move.
        let moved = three.iter().zip(&four).filter(|(a, b)| a != b).count();
        assert!(three.iter().zip(&four).all(|(a, b)| a == b || *b == 3));
        assert!((2000..3000).contains(&moved), "moved {moved} of 10000");
        // Each bucket gets a fair share.
        for bucket in 0..4 {
            let n = four.iter().filter(|b| **b == bucket).count();
            assert!((2200..2800).contains(&n), "bucket {bucket}: {n}");
        }
        // Fixed values: the hash must never change between builds, or nodes of two
        // versions would look for a channel on different instances.
        // (Reference values computed independently from the published algorithms.)
        let h = fnv1a(b"chat:1");
        assert_eq!(h, 0xf2ed_1503_1ab6_b336);
        let buckets: Vec<usize> = (1..=10).map(|n| jump_hash(h, n)).collect();
        assert_eq!(buckets, [0, 0, 0, 0, 0, 0, 0, 0, 8, 8]);
    }

    #[test]
    fn pubsub_names_round_trip() {
        let keys = Keys {
            prefix: "herald".into(),
        };
        let name = keys.pubsub("chat:a{b}");
        assert_eq!(keys.channel_of(&name), Some("chat:a{b}"));
        assert_eq!(keys.channel_of(b"other.client.x"), None);
        assert_eq!(keys.stream("c"), "herald.stream.{c}");
    }
}
