//! The control seam: commands from one node to the others (centrifuge calls it the
//! controller). A server-API call, a console action or an emulation POST can arrive at any
//! node, while the sessions it is meant for live on some of them; the node turns the call
//! into a [`ControlMessage`] and the [`Controller`] carries it to every node (or to one),
//! where the node's [`ControlHandler`] applies it to its own sessions.
//!
//! Some calls need answers from the nodes, not just delivery: `channels` sums every node's
//! subscriber counts, and an emulation frame forwarded to the node that holds its session
//! must say whether that session took it. A node asks with a [`ControlCommand::Survey`]
//! (to every node, or to one) and each node asked answers with a
//! [`ControlCommand::SurveyReply`] addressed to the asker; [`Surveys`] matches the answers
//! to the waiting caller. Surveys ride on [`Controller::publish`] like every other message,
//! so every controller supports them with no code of its own.
//!
//! Messages are plain data (serde), so a networked controller can carry them as bytes
//! ([`ControlMessage::encode`], [`ControlMessage::decode`]); the memory controller hands
//! them to this node's handler as they are.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

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
    /// A question for every node (`to: None`) or for one; each node asked answers with a
    /// [`ControlCommand::SurveyReply`] carrying the same `id`, addressed to the asker.
    Survey {
        /// Chosen by the asker; unique among its open surveys.
        id: u64,
        /// The question.
        query: SurveyQuery,
    },
    /// One node's answer to a [`ControlCommand::Survey`] (the answering node is the
    /// message's `from`).
    SurveyReply {
        /// The survey's id.
        id: u64,
        /// The answer.
        answer: SurveyAnswer,
    },
    /// A node's announcement of itself (sent periodically; see `Node::start`).
    Node(NodeInfo),
}

/// What a [`ControlCommand::Survey`] asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SurveyQuery {
    /// The node's channels with subscribers whose names match `pattern` (a glob with `*`;
    /// empty: every channel), with their subscriber counts (server API `channels`).
    Channels {
        /// Glob; empty: all.
        pattern: String,
    },
    /// The node's connected clients (the console's connection list).
    Connections,
    /// Commands for an emulation session on the node asked (`POST /emulation` that
    /// reached another node).
    Emulation {
        /// The session id from the connect result.
        session: String,
        /// The commands, as the client sent them.
        #[serde(with = "base64_bytes")]
        data: Bytes,
    },
}

/// A node's answer to a [`SurveyQuery`], of the same kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SurveyAnswer {
    /// Channel name to subscribers on the answering node.
    Channels {
        /// The matching channels.
        channels: BTreeMap<String, u32>,
    },
    /// The answering node's clients as (user, client id).
    Connections {
        /// The clients.
        clients: Vec<(String, String)>,
    },
    /// Whether the session was on the answering node and took the commands.
    Emulation {
        /// The session took them.
        delivered: bool,
    },
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

/// The surveys a node is waiting on: answers arriving through the controller are handed,
/// by survey id, to the caller that opened the survey.
#[derive(Default)]
pub struct Surveys {
    next_id: AtomicU64,
    /// Open surveys: id to where their answers go (bounded; see [`Surveys::open`]).
    open: Mutex<HashMap<u64, mpsc::Sender<(String, SurveyAnswer)>>>,
}

/// An open survey: its id, and its answers as (node uid, answer). Closed when dropped;
/// answers arriving later are dropped.
pub struct OpenSurvey<'a> {
    surveys: &'a Surveys,
    /// The id to send in the [`ControlCommand::Survey`].
    pub id: u64,
    /// The answers, in arrival order.
    pub answers: mpsc::Receiver<(String, SurveyAnswer)>,
}

impl Surveys {
    /// Opens a survey that expects about `expected` answers. Room is kept for a few more
    /// (a node that started after the asker made its list also answers); answers beyond
    /// that are dropped, as they would be after the survey ended.
    pub fn open(&self, expected: usize) -> OpenSurvey<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, answers) = mpsc::channel(expected + 8);
        self.open.lock().insert(id, tx);
        OpenSurvey {
            surveys: self,
            id,
            answers,
        }
    }

    /// Hands `from`'s answer to survey `id`, if it is still open.
    pub fn answer(&self, id: u64, from: String, answer: SurveyAnswer) {
        if let Some(tx) = self.open.lock().get(&id) {
            let _ = tx.try_send((from, answer));
        }
    }
}

impl Drop for OpenSurvey<'_> {
    fn drop(&mut self) {
        self.surveys.open.lock().remove(&self.id);
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
                command: ControlCommand::Survey {
                    id: 7,
                    query: SurveyQuery::Emulation {
                        session: "s".into(),
                        data: Bytes::from_static(b"{\"id\":1}\n\x00\xff"),
                    },
                },
            },
            ControlMessage {
                from: "b".into(),
                to: Some("a".into()),
                command: ControlCommand::SurveyReply {
                    id: 7,
                    answer: SurveyAnswer::Channels {
                        channels: [("chat:a".to_string(), 3)].into(),
                    },
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

    #[tokio::test]
    async fn answers_reach_only_their_open_survey() {
        let surveys = Surveys::default();
        let mut first = surveys.open(1);
        let second = surveys.open(1);
        assert_ne!(first.id, second.id);
        let closed = second.id;
        drop(second);
        let answer = SurveyAnswer::Emulation { delivered: true };
        surveys.answer(closed, "x".into(), answer.clone());
        surveys.answer(first.id, "n1".into(), answer.clone());
        assert_eq!(first.answers.recv().await, Some(("n1".into(), answer)));
        assert!(
            surveys.open.lock().len() == 1,
            "the dropped survey is closed"
        );
    }
}
