//! The control seam: commands from one node to the others (centrifuge calls it the
//! controller). A server-API call, a console action or an emulation POST can arrive at any
//! node, while the sessions it is meant for live on some of them; the node turns the call
//! into a [`ControlMessage`] and the [`Controller`] carries it to every node (or to one),
//! where the node's [`ControlHandler`] applies it to its own sessions.
//!
//! Messages are plain data (serde), so a networked controller can carry them as bytes
//! ([`ControlMessage::encode`], [`ControlMessage::decode`]); the memory controller hands
//! them to this node's handler as they are.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::EngineError;

/// One node's counts, announced to the others so that `info` can list every live node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique id of the node's process (new at every start).
    pub uid: String,
    /// Configured node name.
    pub name: String,
    /// Herald's version.
    pub version: String,
    /// Connected clients.
    pub num_clients: usize,
    /// Distinct users.
    pub num_users: usize,
    /// Channels with subscribers.
    pub num_channels: usize,
    /// Subscriptions.
    pub num_subs: usize,
    /// Seconds since start.
    pub uptime: u64,
}

/// What a node asks the others to do.
///
/// The user commands reach the sessions of `user` on each node (only the session whose
/// client id is `client`, when set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Close the user's connections, except the client ids in `whitelist`.
    Disconnect {
        /// User id.
        user: String,
        /// Only this client.
        client: Option<String>,
        /// Client ids to keep.
        whitelist: Vec<String>,
        /// Disconnect code sent to the clients.
        code: u32,
        /// Disconnect reason sent to the clients.
        reason: String,
    },
    /// Subscribe the user's sessions to `channel` (server-side subscription).
    Subscribe {
        /// User id.
        user: String,
        /// Only this client.
        client: Option<String>,
        /// Channel.
        channel: String,
    },
    /// End the user's subscriptions to `channel`.
    Unsubscribe {
        /// User id.
        user: String,
        /// Only this client.
        client: Option<String>,
        /// Channel.
        channel: String,
    },
    /// Change the expiry of the user's connections.
    Refresh {
        /// User id.
        user: String,
        /// Only this client.
        client: Option<String>,
        /// New expiry, Unix seconds; `None`: never.
        expire_at: Option<i64>,
        /// Expire now.
        expired: bool,
    },
    /// Commands for an emulation session (`POST /emulation` that reached another node).
    Emulation {
        /// The session id from the connect result.
        session: String,
        /// The commands, as the client sent them.
        #[serde(with = "base64_bytes")]
        data: Bytes,
    },
    /// A node's announcement of itself (sent periodically; see `Node::start`).
    Node(NodeInfo),
}

/// A [`ControlCommand`] with its routing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlMessage {
    /// Uid of the node that sent it.
    pub from: String,
    /// The one node it is for; `None`: every node, the sender included.
    pub to: Option<String>,
    /// What to do.
    pub command: ControlCommand,
}

/// A control message that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed control message: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl ControlMessage {
    /// The message as bytes, for controllers that carry it over a network (JSON; an
    /// emulation frame's data in base64).
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The message [`ControlMessage::encode`] made.
    pub fn decode(bytes: &[u8]) -> Result<ControlMessage, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Applies control messages on this node. Registered once by the node at start.
///
/// Implementations must not block: they hand the work to the sessions' bounded inboxes
/// and return, so a controller may call them from the task that reads its connection.
pub trait ControlHandler: Send + Sync {
    /// A message for this node (or for every node). Messages whose `to` names another
    /// node are ignored.
    fn handle_control(&self, message: ControlMessage);
}

/// Carries control messages between nodes.
///
/// Contract:
/// - [`Controller::publish`] delivers a message with `to: None` to every live node,
///   **this one included**, and a message with `to: Some(uid)` to that node only. It
///   returns once the message is sent (not once it is handled); an error means it was not
///   sent.
/// - Delivery is at most once, and messages from one node arrive at another in the order
///   they were published (a networked controller keeps one ordered channel per node,
///   such as one PUB/SUB channel).
/// - Which nodes are live is not the controller's concern: nodes announce themselves with
///   [`ControlCommand::Node`] and keep a registry from what they hear.
#[async_trait]
pub trait Controller: Send + Sync {
    /// Registers the handler that receives every message for this node.
    fn register_handler(&self, handler: Arc<dyn ControlHandler>);
    /// Sends a message (see the trait's contract).
    async fn publish(&self, message: ControlMessage) -> Result<(), EngineError>;
}

/// The single-process controller: this node is the only one, so every message is handed
/// to its own handler, synchronously.
#[derive(Default)]
pub struct MemoryController {
    handler: OnceLock<Arc<dyn ControlHandler>>,
}

impl MemoryController {
    /// A controller with no handler yet.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Controller for MemoryController {
    fn register_handler(&self, handler: Arc<dyn ControlHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(&self, message: ControlMessage) -> Result<(), EngineError> {
        if let Some(h) = self.handler.get() {
            h.handle_control(message);
        }
        Ok(())
    }
}

/// `Bytes` as a standard base64 string.
mod base64_bytes {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_encoding() {
        let messages = [
            ControlMessage {
                from: "a".into(),
                to: Some("b".into()),
                command: ControlCommand::Emulation {
                    session: "s".into(),
                    data: Bytes::from_static(b"{\"id\":1}\n\x00\xff"),
                },
            },
            ControlMessage {
                from: "a".into(),
                to: None,
                command: ControlCommand::Disconnect {
                    user: "u".into(),
                    client: None,
                    whitelist: vec!["c".into()],
                    code: 3503,
                    reason: "force disconnect".into(),
                },
            },
            ControlMessage {
                from: "a".into(),
                to: None,
                command: ControlCommand::Node(NodeInfo {
                    uid: "a".into(),
                    num_clients: 3,
                    ..Default::default()
                }),
            },
        ];
        for m in messages {
            let bytes = m.encode();
            assert_eq!(ControlMessage::decode(&bytes).unwrap(), m);
        }
        assert!(ControlMessage::decode(b"{\"from\":1}").is_err());
    }
}
