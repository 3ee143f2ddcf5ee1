//! The hub: this node's registry of who listens where. Channel to subscribers and user to
//! clients, sharded so that publishers on different channels do not contend.
//!
//! Invariants:
//! - A publication is encoded at most once per encoding and the same [`Bytes`] go to every
//!   subscriber's queue; the hub never copies a payload per client and never awaits one.
//! - Every client has one bounded [`ClientQueue`]. A push that would exceed its byte limit
//!   closes the queue with the "slow" disconnect instead of growing memory.
//! - A new subscription is *pending* until the session has queued its subscribe reply:
//!   deliveries meanwhile are buffered and released right after the reply, dropping those
//!   the reply already covered. This is what makes recovery exact (no gap, no duplicate).
//! - A positioned subscription tracks the stream position its client has reached. A
//!   publication that is not the next one (an offset jump or another epoch: the broker
//!   lost a delivery on its way to this node) is not delivered: the subscription stops
//!   receiving and its session is told to recover ([`Control::InsufficientState`]), so a
//!   lost publication is never a silent gap. Late duplicates (an offset already reached)
//!   are skipped.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::{ClientInfo, Publication, StreamPosition};
use crate::error::Disconnect;
use crate::protocol::{ENCODINGS, Encoding, Reply, proto};

const SHARDS: usize = 64;

fn shard_of<K: Hash + ?Sized>(key: &K) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// Numeric id of a client inside this process.
pub type ClientId = u64;

/// What the node asks a session to do; delivered through the session's control channel.
#[derive(Debug, Clone)]
pub enum Control {
    /// Close the connection with this code.
    Disconnect(Disconnect),
    /// End the subscription to a channel (server-side unsubscribe).
    Unsubscribe {
        /// Channel to leave.
        channel: String,
    },
    /// Subscribe the client to a channel on the server's initiative.
    Subscribe {
        /// Channel to join.
        channel: String,
    },
    /// Change the connection's expiry (server-side refresh); `None` never expires.
    Refresh {
        /// Unix seconds.
        expire_at: Option<i64>,
        /// Expire now.
        expired: bool,
    },
    /// Commands that arrived for this session by another path (emulation endpoint).
    Frame(Bytes),
    /// The subscription to `channel` missed publications (see the module docs): the
    /// client must resubscribe and recover. Ignored unless `generation` is still the
    /// subscription's (the client may have resubscribed meanwhile).
    InsufficientState {
        /// Channel of the broken subscription.
        channel: String,
        /// The subscription's generation (from [`Hub::add_subscriber`]).
        generation: u64,
    },
}

/// Bound on pending control messages per session; they are rare.
const CONTROL_QUEUE: usize = 64;

/// A session's inbox of [`Control`] messages. Controls are rare, so the inbox allocates
/// nothing until one arrives: a channel would allocate a block of slots for every
/// connection up front, about 1.3 KiB each, most of them never used.
#[derive(Debug, Default)]
pub struct ControlInbox {
    queue: Mutex<VecDeque<Control>>,
    /// Wakes the session; a permit is kept when it is not waiting, so none is lost.
    arrived: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
}

impl ControlInbox {
    fn try_push(&self, msg: Control) -> Result<(), Control> {
        let mut q = self.queue.lock();
        if q.len() >= CONTROL_QUEUE {
            return Err(msg);
        }
        q.push_back(msg);
        drop(q);
        self.arrived.notify_one();
        Ok(())
    }

    /// The next control message, waiting for one.
    pub async fn recv(&self) -> Control {
        loop {
            let next = self.queue.lock().pop_front();
            if let Some(msg) = next {
                self.room.notify_waiters();
                return msg;
            }
            self.arrived.notified().await;
        }
    }
}

/// Where a queued publication sits in its channel stream. Transports that write
/// resumable positions beside each event (uni SSE `id:`) read these; others ignore them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionTag {
    /// Channel of the stream.
    pub channel: Arc<str>,
    /// Offset reached once this item is delivered.
    pub offset: u64,
    /// Stream epoch.
    pub epoch: Arc<str>,
}

/// Positions that an item moves its client to: one for a publication, every subscribed
/// channel's for a connect reply. Shared by all subscribers of a publication.
pub type Tags = Arc<[PositionTag]>;

struct QueueState {
    items: VecDeque<(Bytes, Option<Tags>)>,
    bytes: usize,
    close: Option<Disconnect>,
}

/// A client's bounded outbound queue of encoded messages.
pub struct ClientQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    closed: CancellationToken,
    max_bytes: usize,
    encoding: Encoding,
}

/// Most bytes a writer takes from its queue in one batch (one message at least). A backlog
/// then drains as a pipeline of bounded writes instead of one copy of everything queued,
/// which would delay the first message by the time to copy and send all the others.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What a writer takes from the queue in one go.
#[derive(Debug, Default)]
pub struct Batch {
    /// Encoded messages to write, in order.
    pub items: Vec<Bytes>,
    /// Stream positions of some items, by index into `items` (see [`PositionTag`]).
    pub tags: Vec<(usize, Tags)>,
    /// Set when the connection must close after the items.
    pub close: Option<Disconnect>,
}

impl Batch {
    /// Empties the batch, keeping its capacity; drops the references to the messages.
    pub fn clear(&mut self) {
        self.items.clear();
        self.tags.clear();
        self.close = None;
    }
}

impl ClientQueue {
    fn new(encoding: Encoding, max_bytes: usize) -> Self {
        ClientQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                bytes: 0,
                close: None,
            }),
            notify: Notify::new(),
            closed: CancellationToken::new(),
            max_bytes,
            encoding,
        }
    }

    /// The connection's encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Queues one encoded message. Returns false when the queue is closed or overflows;
    /// an overflow closes it with [`Disconnect::SLOW`].
    pub fn push(&self, item: Bytes) -> bool {
        self.push_tagged(item, None)
    }

    /// Queues one encoded message with the stream positions it carries.
    pub fn push_tagged(&self, item: Bytes, tags: Option<Tags>) -> bool {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return false;
        }
        if st.bytes + item.len() > self.max_bytes && !st.items.is_empty() {
            st.items.clear();
            st.bytes = 0;
            st.close = Some(Disconnect::SLOW);
            drop(st);
            self.closed.cancel();
            self.notify.notify_one();
            return false;
        }
        st.bytes += item.len();
        st.items.push_back((item, tags));
        drop(st);
        self.notify.notify_one();
        true
    }

    /// Asks the writer to close the connection after what is queued. The first close wins.
    pub fn close(&self, disconnect: Disconnect) {
        let mut st = self.state.lock();
        if st.close.is_none() {
            st.close = Some(disconnect);
        }
        drop(st);
        self.closed.cancel();
        self.notify.notify_one();
    }

    /// The close reason, once closed.
    pub fn close_reason(&self) -> Option<Disconnect> {
        self.state.lock().close.clone()
    }

    /// Resolves when the queue is closed (overflow, server disconnect or session end).
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Bytes waiting to be written.
    pub fn len_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Waits for messages or a close, then takes everything queued (write coalescing).
    pub async fn next_batch(&self) -> Batch {
        let mut batch = Batch::default();
        self.next_batch_into(&mut batch).await;
        batch
    }

    /// As [`ClientQueue::next_batch`], into a batch the writer keeps from one write to the
    /// next, so that a delivery allocates nothing once the batch has grown to the usual size.
    pub async fn next_batch_into(&self, batch: &mut Batch) {
        batch.clear();
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.state.lock();
                if !st.items.is_empty() || st.close.is_some() {
                    let mut taken = 0;
                    while let Some((item, _)) = st.items.front() {
                        if !batch.items.is_empty() && taken + item.len() > MAX_BATCH_BYTES {
                            break;
                        }
                        let Some((item, tags)) = st.items.pop_front() else {
                            break;
                        };
                        taken += item.len();
                        if let Some(t) = tags {
                            batch.tags.push((batch.items.len(), t));
                        }
                        batch.items.push(item);
                    }
                    st.bytes -= taken;
                    // A close comes after everything queued before it.
                    if st.items.is_empty() {
                        batch.close = st.close.clone();
                    }
                    return;
                }
            }
            notified.await;
        }
    }
}

/// One connected client as the hub sees it.
pub struct ClientHandle {
    /// Process-local numeric id.
    pub id: ClientId,
    /// Protocol client id (a UUID), as shown in presence and ClientInfo.
    pub client: String,
    /// Outbound queue.
    pub queue: ClientQueue,
    user: Mutex<String>,
    /// Control messages for the session (see [`ControlInbox`]).
    pub inbox: ControlInbox,
}

impl ClientHandle {
    /// The authenticated user ("" before connect and for anonymous clients).
    pub fn user(&self) -> String {
        self.user.lock().clone()
    }

    /// Hands commands that arrived by another path (emulation) to the session, waiting
    /// for room in its inbox. False when the session is gone.
    pub async fn send_frame(&self, frame: Bytes) -> bool {
        let mut msg = Control::Frame(frame);
        loop {
            if self.queue.is_closed() {
                return false;
            }
            // Registered before trying, so a pop between the try and the wait still wakes us.
            let room = self.inbox.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.inbox.try_push(msg) {
                Ok(()) => return true,
                Err(back) => msg = back,
            }
            tokio::select! {
                _ = room => {}
                _ = self.queue.closed() => return false,
            }
        }
    }

    /// Sends a control message to the session; a session that cannot keep up is closed.
    pub fn control(&self, msg: Control) {
        if self.inbox.try_push(msg).is_err() {
            self.queue.close(Disconnect::SLOW);
        }
    }
}

/// A delivery held back while its subscription is pending: (offset, epoch, bytes,
/// positions); offset 0 and no epoch for events outside the stream (join, leave, and
/// publications of channels without history).
type Pending = (u64, Option<Arc<str>>, Bytes, Option<Tags>);

/// Clients by id, as registered under one user.
type UserClients = HashMap<ClientId, Arc<ClientHandle>>;

struct Subscriber {
    client: Arc<ClientHandle>,
    join_leave: bool,
    /// Tells this subscription from the client's earlier and later ones to the channel.
    generation: u64,
    /// Deliveries held back until activation (see the module docs); `None` once active.
    pending: Option<Mutex<Vec<Pending>>>,
    /// The position the client has reached, for positioned subscriptions (set at
    /// activation); `None` when the client does not follow the stream's positions.
    position: Option<Tracked>,
}

/// A positioned subscription's place in its channel stream. Deliveries of one channel
/// never run concurrently (the broker's contract), so plain atomics suffice.
struct Tracked {
    epoch: Arc<str>,
    /// Offset of the last publication delivered (or covered by the subscribe reply).
    offset: AtomicU64,
    /// A gap was found: nothing more is delivered, the session was told to recover.
    broken: AtomicBool,
    /// A publication was delivered since the last position check.
    fresh: AtomicBool,
}

/// What to do with one publication for one positioned subscriber.
enum Admit {
    Deliver,
    /// Already delivered (a late duplicate), or the subscription is broken.
    Skip,
    /// Not the next publication: the subscription is now broken.
    Gap,
}

impl Tracked {
    fn admit(&self, offset: u64, epoch: Option<&Arc<str>>) -> Admit {
        if offset == 0 {
            // Published with skip_history: outside the stream, nothing to check.
            return Admit::Deliver;
        }
        if self.broken.load(Ordering::Relaxed) {
            return Admit::Skip;
        }
        let last = self.offset.load(Ordering::Relaxed);
        let same_epoch = epoch.is_some_and(|e| **e == *self.epoch);
        if same_epoch && offset <= last {
            return Admit::Skip;
        }
        if !same_epoch || offset != last + 1 {
            self.broken.store(true, Ordering::Relaxed);
            return Admit::Gap;
        }
        self.offset.store(offset, Ordering::Relaxed);
        self.fresh.store(true, Ordering::Relaxed);
        Admit::Deliver
    }
}

/// What one delivery did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Delivered {
    /// Queued (or held while pending).
    Queued,
    /// Not queued: the queue is closed, or the item was a duplicate.
    Not,
    /// Not queued: a gap; the session was told to recover.
    Gap,
}

impl Subscriber {
    fn deliver(
        &self,
        channel: &str,
        offset: u64,
        epoch: Option<&Arc<str>>,
        bytes: Bytes,
        tags: Option<&Tags>,
    ) -> Delivered {
        if let Some(pending) = &self.pending {
            pending
                .lock()
                .push((offset, epoch.cloned(), bytes, tags.cloned()));
            return Delivered::Queued;
        }
        if let Some(tracked) = &self.position {
            match tracked.admit(offset, epoch) {
                Admit::Deliver => {}
                Admit::Skip => return Delivered::Not,
                Admit::Gap => {
                    self.insufficient_state(channel);
                    return Delivered::Gap;
                }
            }
        }
        if self.client.queue.push_tagged(bytes, tags.cloned()) {
            Delivered::Queued
        } else {
            Delivered::Not
        }
    }

    fn insufficient_state(&self, channel: &str) {
        self.client.control(Control::InsufficientState {
            channel: channel.to_string(),
            generation: self.generation,
        });
    }
}

/// What [`Hub::add_subscriber`] did.
#[derive(Clone, Copy, Debug)]
pub struct Added {
    /// The channel's first subscriber on this node: the node subscribes to it in the broker.
    pub first: bool,
    /// The new subscription's generation (see [`Control::InsufficientState`]).
    pub generation: u64,
}

/// What [`Hub::broadcast_publication`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Subscribers whose queue (or pending buffer) took the publication.
    pub delivered: usize,
    /// Subscribers for which the publication revealed a gap (told to recover).
    pub gaps: usize,
}

/// A positioned subscription's position, for the periodic check against the stream top.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Where the client is.
    pub position: StreamPosition,
    /// A publication reached it since the previous probe (then no check is needed).
    pub fresh: bool,
    /// The subscription's generation.
    pub generation: u64,
}

type ChannelMap = HashMap<Arc<str>, HashMap<ClientId, Subscriber>>;

/// The local registry and fan-out.
pub struct Hub {
    channels: Vec<RwLock<ChannelMap>>,
    users: Vec<RwLock<HashMap<String, UserClients>>>,
    clients: Vec<RwLock<HashMap<ClientId, Arc<ClientHandle>>>>,
    sessions: Vec<RwLock<HashMap<String, Arc<ClientHandle>>>>,
    next_id: AtomicU64,
    subscriptions: AtomicUsize,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes pushes lazily, at most once per encoding.
struct EncodedOnce<F: Fn(Encoding) -> Bytes> {
    make: F,
    cache: [Option<Bytes>; ENCODINGS],
}

impl<F: Fn(Encoding) -> Bytes> EncodedOnce<F> {
    fn new(make: F) -> Self {
        EncodedOnce {
            make,
            cache: Default::default(),
        }
    }

    fn get(&mut self, enc: Encoding) -> Bytes {
        self.cache[enc.index()]
            .get_or_insert_with(|| (self.make)(enc))
            .clone()
    }
}

fn push_reply(push: proto::Push) -> Reply {
    Reply {
        push: Some(push),
        ..Default::default()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Hub {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            users: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            clients: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sessions: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            subscriptions: AtomicUsize::new(0),
        }
    }

    /// Creates a client handle with its queue and control inbox.
    pub fn new_client(&self, encoding: Encoding, max_queue_bytes: usize) -> Arc<ClientHandle> {
        Arc::new(ClientHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client: uuid::Uuid::new_v4().to_string(),
            queue: ClientQueue::new(encoding, max_queue_bytes),
            user: Mutex::new(String::new()),
            inbox: ControlInbox::default(),
        })
    }

    /// Registers an authenticated client under its user.
    pub fn add_client(&self, handle: &Arc<ClientHandle>, user: &str) {
        *handle.user.lock() = user.to_string();
        self.users[shard_of(user)]
            .write()
            .entry(user.to_string())
            .or_default()
            .insert(handle.id, handle.clone());
        self.clients[shard_of(&handle.id)]
            .write()
            .insert(handle.id, handle.clone());
    }

    /// Forgets a client (its subscriptions are removed separately by its session).
    pub fn remove_client(&self, handle: &ClientHandle) {
        let user = handle.user();
        let mut shard = self.users[shard_of(user.as_str())].write();
        if let Some(clients) = shard.get_mut(&user) {
            clients.remove(&handle.id);
            if clients.is_empty() {
                shard.remove(&user);
            }
        }
        self.clients[shard_of(&handle.id)]
            .write()
            .remove(&handle.id);
    }

    /// Registers an emulation session id, under which later commands for it arrive.
    pub fn add_session(&self, session: &str, handle: &Arc<ClientHandle>) {
        self.sessions[shard_of(session)]
            .write()
            .insert(session.to_string(), handle.clone());
    }

    /// Forgets an emulation session id.
    pub fn remove_session(&self, session: &str) {
        self.sessions[shard_of(session)].write().remove(session);
    }

    /// The client behind an emulation session id.
    pub fn session(&self, session: &str) -> Option<Arc<ClientHandle>> {
        self.sessions[shard_of(session)]
            .read()
            .get(session)
            .cloned()
    }

    /// The connected clients of a user.
    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientHandle>> {
        self.users[shard_of(user)]
            .read()
            .get(user)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many connections `user` has on this node.
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.users[shard_of(user)]
            .read()
            .get(user)
            .map_or(0, |c| c.len())
    }

    /// Every connected client.
    pub fn all_clients(&self) -> Vec<Arc<ClientHandle>> {
        self.clients
            .iter()
            .flat_map(|s| s.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Adds a pending subscriber; says whether it is the channel's first on this node (the
    /// node then subscribes to the channel in the broker) and its generation.
    pub fn add_subscriber(
        &self,
        channel: &str,
        client: &Arc<ClientHandle>,
        join_leave: bool,
    ) -> Added {
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.channels[shard_of(channel)].write();
        let first = !shard.contains_key(channel);
        let subs = shard.entry(Arc::from(channel)).or_default();
        let sub = Subscriber {
            client: client.clone(),
            join_leave,
            generation,
            pending: Some(Mutex::new(Vec::new())),
            position: None,
        };
        if subs.insert(client.id, sub).is_none() {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        Added { first, generation }
    }

    /// Queues the subscribe reply (if any), then releases what arrived while the
    /// subscription was pending.
    ///
    /// `position` is where the reply leaves a positioned subscription's client (`None`
    /// for a client that does not follow positions): held publications up to it are
    /// dropped, and from then on every publication must be the next one (see the module
    /// docs). Returns true when the held publications already show a gap (the session
    /// was told to recover).
    pub fn activate(
        &self,
        channel: &str,
        client: &ClientHandle,
        reply: Option<(Bytes, Option<Tags>)>,
        position: Option<&StreamPosition>,
    ) -> bool {
        let mut shard = self.channels[shard_of(channel)].write();
        let sub = shard
            .get_mut(channel)
            .and_then(|subs| subs.get_mut(&client.id));
        if let Some((reply, tags)) = reply {
            client.queue.push_tagged(reply, tags);
        }
        let Some(sub) = sub else {
            return false;
        };
        if let Some(pos) = position.filter(|p| !p.epoch.is_empty()) {
            sub.position = Some(Tracked {
                epoch: Arc::from(pos.epoch.as_str()),
                offset: AtomicU64::new(pos.offset),
                broken: AtomicBool::new(false),
                fresh: AtomicBool::new(false),
            });
        }
        let Some(pending) = sub.pending.take() else {
            return false;
        };
        let mut gap = false;
        for (offset, epoch, bytes, tags) in pending.into_inner() {
            let admit = match &sub.position {
                Some(tracked) => tracked.admit(offset, epoch.as_ref()),
                None => Admit::Deliver,
            };
            match admit {
                Admit::Deliver => {
                    client.queue.push_tagged(bytes, tags);
                }
                Admit::Skip => {}
                Admit::Gap => {
                    sub.insufficient_state(channel);
                    gap = true;
                }
            }
        }
        gap
    }

    /// The position a positioned, active subscription's client has reached, for the
    /// periodic check; `None` when there is nothing to check (not found, pending, not
    /// positioned, or already told to recover). Clears the subscription's "fresh" mark.
    pub fn probe(&self, channel: &str, client: &ClientHandle) -> Option<Probe> {
        let shard = self.channels[shard_of(channel)].read();
        let sub = shard.get(channel)?.get(&client.id)?;
        if sub.pending.is_some() {
            return None;
        }
        let tracked = sub.position.as_ref()?;
        if tracked.broken.load(Ordering::Relaxed) {
            return None;
        }
        Some(Probe {
            position: StreamPosition {
                offset: tracked.offset.load(Ordering::Relaxed),
                epoch: tracked.epoch.to_string(),
            },
            fresh: tracked.fresh.swap(false, Ordering::Relaxed),
            generation: sub.generation,
        })
    }

    /// Removes a subscriber. Returns true when the channel has no subscriber left here.
    pub fn remove_subscriber(&self, channel: &str, client: &ClientHandle) -> bool {
        let mut shard = self.channels[shard_of(channel)].write();
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        if subs.remove(&client.id).is_some() {
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        if subs.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Delivers a publication to every local subscriber of `channel`. `epoch` is the
    /// channel stream's epoch, checked against positioned subscriptions and written into
    /// the items' [`PositionTag`].
    pub fn broadcast_publication(
        &self,
        channel: &str,
        publication: &Publication,
        epoch: &str,
    ) -> Fanout {
        let shard = self.channels[shard_of(channel)].read();
        let Some(subs) = shard.get(channel) else {
            return Fanout::default();
        };
        let epoch: Option<Arc<str>> = (publication.offset > 0).then(|| Arc::from(epoch));
        let tags: Option<Tags> = epoch.as_ref().map(|epoch| {
            Arc::from([PositionTag {
                channel: Arc::from(channel),
                offset: publication.offset,
                epoch: epoch.clone(),
            }])
        });
        let mut encoded = EncodedOnce::new(|enc| {
            enc.encode_reply(&push_reply(proto::Push {
                channel: channel.to_string(),
                r#pub: Some(publication.to_proto()),
                ..Default::default()
            }))
            .unwrap_or_default()
        });
        let mut fanout = Fanout::default();
        for sub in subs.values() {
            let bytes = encoded.get(sub.client.queue.encoding());
            match sub.deliver(
                channel,
                publication.offset,
                epoch.as_ref(),
                bytes,
                tags.as_ref(),
            ) {
                Delivered::Queued => fanout.delivered += 1,
                Delivered::Not => {}
                Delivered::Gap => fanout.gaps += 1,
            }
        }
        fanout
    }

    /// Delivers a join (`join` true) or leave event to the subscribers that asked for them.
    pub fn broadcast_presence_event(&self, channel: &str, info: &ClientInfo, join: bool) {
        let shard = self.channels[shard_of(channel)].read();
        let Some(subs) = shard.get(channel) else {
            return;
        };
        let mut encoded = EncodedOnce::new(|enc| {
            let info = Some(info.to_proto());
            let mut push = proto::Push {
                channel: channel.to_string(),
                ..Default::default()
            };
            if join {
                push.join = Some(proto::Join { info });
            } else {
                push.leave = Some(proto::Leave { info });
            }
            enc.encode_reply(&push_reply(push)).unwrap_or_default()
        });
        for sub in subs.values().filter(|s| s.join_leave) {
            let bytes = encoded.get(sub.client.queue.encoding());
            sub.deliver(channel, 0, None, bytes, None);
        }
    }

    /// Channels with local subscribers and their subscriber counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.channels
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of connected (authenticated) clients.
    pub fn num_clients(&self) -> usize {
        self.clients.iter().map(|s| s.read().len()).sum()
    }

    /// Number of distinct users connected.
    pub fn num_users(&self) -> usize {
        self.users.iter().map(|s| s.read().len()).sum()
    }

    /// Number of channels with local subscribers.
    pub fn num_channels(&self) -> usize {
        self.channels.iter().map(|s| s.read().len()).sum()
    }

    /// Number of subscriptions on this node.
    pub fn num_subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64) -> Publication {
        Publication {
            data: Bytes::from_static(b"{\"x\":1}"),
            offset,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn pending_subscription_releases_after_reply_without_duplicates() {
        let hub = Hub::new();
        let c = hub.new_client(Encoding::Json, 1 << 20);
        hub.add_subscriber("ch", &c, false);
        hub.broadcast_publication("ch", &publication(4), "e");
        hub.broadcast_publication("ch", &publication(5), "e");
        assert_eq!(
            c.queue.len_bytes(),
            0,
            "pending deliveries wait for the reply"
        );
        let at = StreamPosition {
            offset: 4,
            epoch: "e".into(),
        };
        hub.activate(
            "ch",
            &c,
            Some((Bytes::from_static(b"REPLY"), None)),
            Some(&at),
        );
        hub.broadcast_publication("ch", &publication(6), "e");
        let batch = c.queue.next_batch().await;
        assert_eq!(batch.items.len(), 3);
        assert_eq!(&batch.items[0][..], b"REPLY");
        assert!(
            std::str::from_utf8(&batch.items[1])
                .unwrap()
                .contains("\"offset\":5")
        );
        assert!(
            std::str::from_utf8(&batch.items[2])
                .unwrap()
                .contains("\"offset\":6")
        );
    }

    fn offsets_queued(c: &ClientHandle) -> Vec<u64> {
        let mut out = Vec::new();
        let batch = futures_util::FutureExt::now_or_never(c.queue.next_batch());
        for item in batch.map(|b| b.items).unwrap_or_default() {
            let v: serde_json::Value = serde_json::from_slice(&item).unwrap();
            out.push(v["push"]["pub"]["offset"].as_u64().unwrap_or(0));
        }
        out
    }

    fn insufficient_state(c: &ClientHandle) -> Option<(String, u64)> {
        match futures_util::FutureExt::now_or_never(c.inbox.recv()) {
            Some(Control::InsufficientState {
                channel,
                generation,
            }) => Some((channel, generation)),
            Some(other) => panic!("unexpected control {other:?}"),
            None => None,
        }
    }

    #[tokio::test]
    async fn an_offset_jump_stops_delivery_and_asks_for_recovery() {
        let hub = Hub::new();
        let c = hub.new_client(Encoding::Json, 1 << 20);
        let added = hub.add_subscriber("ch", &c, false);
        let at = StreamPosition {
            offset: 1,
            epoch: "e".into(),
        };
        assert!(!hub.activate("ch", &c, None, Some(&at)));
        let fanout = |n| hub.broadcast_publication("ch", &publication(n), "e");
        assert_eq!(fanout(2).delivered, 1);
        assert_eq!(fanout(2), Fanout::default(), "a late duplicate is skipped");
        assert_eq!(insufficient_state(&c), None);
        assert_eq!(fanout(4).gaps, 1, "3 was lost");
        assert_eq!(fanout(5), Fanout::default(), "nothing after a gap");
        assert_eq!(offsets_queued(&c), vec![2]);
        assert_eq!(
            insufficient_state(&c),
            Some(("ch".to_string(), added.generation))
        );
        assert_eq!(hub.probe("ch", &c), None, "broken: nothing to check");
    }

    #[tokio::test]
    async fn another_epoch_asks_for_recovery() {
        let hub = Hub::new();
        let c = hub.new_client(Encoding::Json, 1 << 20);
        hub.add_subscriber("ch", &c, false);
        let at = StreamPosition {
            offset: 7,
            epoch: "e".into(),
        };
        hub.activate("ch", &c, None, Some(&at));
        let fanout = hub.broadcast_publication("ch", &publication(8), "other");
        assert_eq!(fanout.gaps, 1);
        assert!(insufficient_state(&c).is_some());
    }

    #[tokio::test]
    async fn a_gap_in_held_publications_is_found_at_activation() {
        let hub = Hub::new();
        let c = hub.new_client(Encoding::Json, 1 << 20);
        hub.add_subscriber("ch", &c, false);
        for n in [3, 4, 6] {
            hub.broadcast_publication("ch", &publication(n), "e");
        }
        let at = StreamPosition {
            offset: 3,
            epoch: "e".into(),
        };
        assert!(hub.activate("ch", &c, None, Some(&at)));
        assert_eq!(offsets_queued(&c), vec![4]);
        assert!(insufficient_state(&c).is_some());
    }

    #[tokio::test]
    async fn probe_reports_the_position_and_whether_publications_arrived() {
        let hub = Hub::new();
        let c = hub.new_client(Encoding::Json, 1 << 20);
        hub.add_subscriber("ch", &c, false);
        assert_eq!(hub.probe("ch", &c), None, "pending");
        let at = StreamPosition {
            offset: 1,
            epoch: "e".into(),
        };
        hub.activate("ch", &c, None, Some(&at));
        assert!(!hub.probe("ch", &c).unwrap().fresh);
        hub.broadcast_publication("ch", &publication(2), "e");
        let probe = hub.probe("ch", &c).unwrap();
        assert!(probe.fresh);
        assert_eq!(probe.position.offset, 2);
        assert!(!hub.probe("ch", &c).unwrap().fresh, "fresh is cleared");
    }

    #[tokio::test]
    async fn one_encoding_is_shared_by_all_subscribers() {
        let hub = Hub::new();
        let clients: Vec<_> = (0..3)
            .map(|_| hub.new_client(Encoding::Protobuf, 1 << 20))
            .collect();
        for c in &clients {
            hub.add_subscriber("ch", c, false);
            hub.activate("ch", c, None, None);
        }
        assert_eq!(
            hub.broadcast_publication("ch", &publication(1), "e")
                .delivered,
            3
        );
        let mut ptrs = Vec::new();
        for c in &clients {
            let b = c.queue.next_batch().await;
            ptrs.push(b.items[0].as_ptr());
        }
        assert!(
            ptrs.windows(2).all(|w| w[0] == w[1]),
            "same bytes for everyone"
        );
    }

    #[tokio::test]
    async fn overflowing_queue_closes_with_slow() {
        let hub = Hub::new();
        let c = hub.new_client(Encoding::Json, 64);
        hub.add_subscriber("ch", &c, false);
        hub.activate("ch", &c, None, None);
        for i in 1..=10 {
            hub.broadcast_publication("ch", &publication(i), "e");
        }
        assert!(c.queue.is_closed());
        assert_eq!(c.queue.close_reason(), Some(Disconnect::SLOW));
        let batch = c.queue.next_batch().await;
        assert_eq!(batch.close, Some(Disconnect::SLOW));
    }

    #[tokio::test]
    async fn a_backlog_drains_in_bounded_batches_and_the_close_comes_last() {
        let hub = Hub::new();
        let c = hub.new_client(Encoding::Json, 8 << 20);
        let big = Bytes::from(vec![b'x'; 100 * 1024]);
        for _ in 0..5 {
            assert!(c.queue.push_tagged(big.clone(), None));
        }
        c.queue.close(Disconnect::SHUTDOWN);
        let mut sizes = Vec::new();
        let mut batch = Batch::default();
        loop {
            c.queue.next_batch_into(&mut batch).await;
            sizes.push(batch.items.len());
            let total: usize = batch.items.iter().map(Bytes::len).sum();
            assert!(total <= MAX_BATCH_BYTES, "batch of {total} bytes");
            if let Some(close) = batch.close.take() {
                assert_eq!(close, Disconnect::SHUTDOWN);
                break;
            }
        }
        assert_eq!(
            sizes,
            vec![2, 2, 1],
            "every message once, in batches of at most 256 KiB"
        );
    }
}
