//! What receivers count: latency histograms (HdrHistogram, one per shard of connections,
//! merged for the report) and per-stream sequence tracking that tells lost, duplicated and
//! reordered publications apart.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms hold, in microseconds (60 s); larger values are clamped.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant figures.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Records one latency in microseconds (clamped to 1..=[`MAX_LATENCY_US`]).
    pub fn record_us(&mut self, us: u64) {
        let _ = self.0.record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Records the time from `sent_ns` to `now_ns` (0 if the clocks disagree).
    pub fn record_since(&mut self, sent_ns: u64, now_ns: u64) {
        self.record_us(now_ns.saturating_sub(sent_ns) / 1_000);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Forgets every value.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The summary that goes into reports.
    pub fn summary(&self) -> LatencySummary {
        let q = |p: f64| {
            if self.0.is_empty() {
                0.0
            } else {
                self.0.value_at_quantile(p) as f64 / 1000.0
            }
        };
        LatencySummary {
            count: self.0.len(),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if self.0.is_empty() {
                0.0
            } else {
                self.0.max() as f64 / 1000.0
            },
            mean_ms: if self.0.is_empty() {
                0.0
            } else {
                self.0.mean() / 1000.0
            },
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// Tracks one stream of sequence numbers (one publisher on one channel, seen by one
/// subscriber). Publications of one stream arrive in order; anything else is counted.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    /// The next sequence number expected.
    next: u64,
    /// Sequence numbers skipped over and not (yet) seen.
    gaps: BTreeSet<u64>,
    /// Distinct publications seen.
    pub unique: u64,
    /// Publications seen more than once (counted once per extra copy).
    pub duplicates: u64,
    /// Publications that arrived after a later one of the same stream.
    pub reordered: u64,
}

/// What [`SeqTracker::observe`] made of one sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The first copy of this publication.
    New,
    /// A copy of one already seen.
    Duplicate,
}

impl SeqTracker {
    /// Records sequence number `seq`.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            // Bounded: a gap of millions means a broken stream, not a reordering to repair.
            if seq - self.next <= 100_000 {
                self.gaps.extend(self.next..seq);
            }
            self.next = seq + 1;
        } else if self.gaps.remove(&seq) {
            self.reordered += 1;
        } else {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.unique += 1;
        Seen::New
    }

    /// Publications missing when the publisher sent `published` in all.
    pub fn missing(&self, published: u64) -> u64 {
        published.saturating_sub(self.unique)
    }

    /// Publications seen past `published` (more than were sent: a counting error).
    pub fn excess(&self, published: u64) -> u64 {
        self.unique.saturating_sub(published)
    }
}

/// Counters and the latency histogram of one shard of connections.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Latency of publications received in the current phase.
    pub latency: Latency,
    /// Distinct publications received.
    pub unique: u64,
    /// Extra copies received.
    pub duplicates: u64,
    /// Publications received out of order.
    pub reordered: u64,
}

/// Counters shared by every connection: sharded so that connections on different worker
/// threads rarely touch the same lock.
#[derive(Debug)]
pub struct Recorder {
    shards: Vec<Mutex<ShardStats>>,
    /// Bytes read from subscriber sockets (TCP payload: framing included).
    pub wire_bytes: AtomicU64,
    /// Connections that completed connect and subscribe (cumulative, reconnects included).
    pub subscribed: AtomicU64,
    /// Connections currently between a disconnect and their next successful subscribe.
    pub down: AtomicU64,
    /// Server-initiated disconnects seen.
    pub disconnects: AtomicU64,
    /// Connection or protocol errors.
    pub errors: AtomicU64,
    /// Recoveries that the server reported as not recovered (`recovered: false`).
    pub unrecovered: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Recorder {
    /// A recorder with `shards` shards (at least one).
    pub fn new(shards: usize) -> Recorder {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(ShardStats::default()))
                .collect(),
            wire_bytes: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            down: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unrecovered: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
        }
    }

    /// The shard of connection `id`.
    pub fn shard(&self, id: usize) -> &Mutex<ShardStats> {
        &self.shards[id % self.shards.len()]
    }

    /// Counts an error; the first few are kept for the report.
    pub fn error(&self, what: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock();
        if first.len() < 10 {
            first.push(what.into());
        }
    }

    /// The first errors seen.
    pub fn first_errors(&self) -> Vec<String> {
        self.first_errors.lock().clone()
    }

    /// Distinct publications received so far, all shards.
    pub fn unique(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().unique).sum()
    }

    /// Merges the shards' histograms and counters; with `reset`, starts a new phase
    /// (histograms emptied; counters kept).
    pub fn merged(&self, reset: bool) -> ShardStats {
        let mut total = ShardStats::default();
        for s in &self.shards {
            let mut s = s.lock();
            total.latency.merge(&s.latency);
            total.unique += s.unique;
            total.duplicates += s.duplicates;
            total.reordered += s.reordered;
            if reset {
                s.latency.reset();
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        for us in 1..=1000 {
            a.record_us(us);
        }
        for _ in 0..998 {
            b.record_us(100_000);
        }
        b.record_us(u64::MAX);
        let mut m = Latency::default();
        m.merge(&a);
        m.merge(&b);
        assert_eq!(m.count(), 1999);
        let s = m.summary();
        assert!((s.p50_ms - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.p90_ms - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 60_000.0).abs() < 60.0, "clamped: {s:?}");
        let mut r = Recorder::new(3);
        r.shard(0).lock().latency.record_us(5);
        r.shard(4).lock().latency.record_us(7);
        r.shard(4).lock().unique += 2;
        let merged = r.merged(true);
        assert_eq!(merged.latency.count(), 2);
        assert_eq!(merged.unique, 2);
        assert_eq!(r.merged(false).latency.count(), 0, "reset");
        assert_eq!(r.unique(), 2, "counters survive a reset");
        r.error("x");
        assert_eq!(r.first_errors(), vec!["x".to_string()]);
        let _ = &mut r;
    }

    #[test]
    fn sequences_count_loss_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 2, 4, 3, 5, 1] {
            t.observe(s);
        }
        assert_eq!(t.unique, 6);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.missing(6), 0);
        assert_eq!(t.missing(9), 3);
        let mut lossy = SeqTracker::default();
        for s in [0, 1, 5, 6] {
            assert_eq!(lossy.observe(s), Seen::New);
        }
        assert_eq!(lossy.observe(6), Seen::Duplicate);
        assert_eq!(lossy.missing(7), 3);
        assert_eq!(lossy.excess(3), 1);
    }

    #[test]
    fn empty_histogram_summarises_to_zero() {
        assert_eq!(Latency::default().summary(), LatencySummary::default());
    }
}
