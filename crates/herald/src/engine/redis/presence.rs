//! Presence in Redis: per channel a hash (client id → encoded client info) and a sorted
//! set of expiry times. The node that owns a session refreshes its entries; entries of a
//! node that died stop being refreshed and are dropped by the next read after their
//! expiry, and a channel whose entries all lapsed disappears through the keys' own TTL.
//! Expiry times use the Redis clock, so nodes with skewed clocks agree.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use redis::Value;

use super::Shards;
use super::broker::client_info_from_proto;
use crate::engine::{ClientInfo, EngineError, PresenceManager};
use crate::protocol::proto;

static ADD: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/presence_add.lua")));
static REMOVE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/presence_remove.lua")));
static GET: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/presence_get.lua")));

/// The Redis presence manager.
pub struct RedisPresence {
    shards: Arc<Shards>,
}

impl RedisPresence {
    pub(super) fn new(shards: Arc<Shards>) -> RedisPresence {
        RedisPresence { shards }
    }

    async fn invoke(
        &self,
        channel: &str,
        script: &redis::Script,
        args: Vec<Vec<u8>>,
    ) -> Result<Value, EngineError> {
        let keys = &self.shards.keys;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.presence_expire(channel))
            .key(keys.presence_data(channel));
        for a in args {
            invocation.arg(a);
        }
        // Every presence script may run twice: adds and removes are idempotent.
        let shard = self.shards.of(channel);
        let invocation = &invocation;
        shard
            .run_idempotent(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    async fn live(&self, channel: &str) -> Result<Vec<ClientInfo>, EngineError> {
        let reply = self.invoke(channel, &GET, Vec::new()).await?;
        let Value::Array(flat) = reply else {
            return Err(EngineError::Unavailable(
                "unexpected reply from Redis: presence".into(),
            ));
        };
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let Some(Value::BulkString(encoded)) = pair.get(1) else {
                continue;
            };
            match proto::ClientInfo::decode(encoded.as_slice()) {
                Ok(info) => out.push(client_info_from_proto(info)),
                Err(_) => tracing::warn!(channel, "undecodable presence entry in Redis"),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl PresenceManager for RedisPresence {
    async fn add(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let args = vec![
            info.client.clone().into_bytes(),
            info.to_proto().encode_to_vec(),
            ttl_ms.to_string().into_bytes(),
        ];
        self.invoke(channel, &ADD, args).await.map(|_| ())
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        self.invoke(channel, &REMOVE, vec![client.as_bytes().to_vec()])
            .await
            .map(|_| ())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, EngineError> {
        Ok(self
            .live(channel)
            .await?
            .into_iter()
            .map(|i| (i.client.clone(), i))
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<(u32, u32), EngineError> {
        let clients = self.live(channel).await?;
        let users: HashSet<&str> = clients.iter().map(|c| c.user.as_str()).collect();
        Ok((clients.len() as u32, users.len() as u32))
    }
}
