//! How a subscription starts on its channel's stream, as Centrifugo decides it: whether it is
//! recoverable and positioned, what history a subscribe reads, and whether what it read
//! recovers the client exactly. Pure: the session reads the history and applies the answer.

use std::sync::Arc;

use crate::config::ChannelOptions;
use crate::engine::{HistoryFilter, HistoryResult, Publication, StreamPosition};
use crate::protocol::proto;

/// What a subscription is, from the namespace's options and the client's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mode {
    /// Recovers missed publications after a reconnect.
    pub recoverable: bool,
    /// Follows the stream's positions (offset, epoch).
    pub positioned: bool,
    /// Gets join and leave pushes.
    pub join_leave: bool,
}

impl Mode {
    /// The namespace forces recovery and positioning, or allows the client to ask; both
    /// need history (size and TTL).
    pub fn of(opts: &ChannelOptions, req: &proto::SubscribeRequest) -> Mode {
        let history_on = opts.history_size > 0 && !opts.history_ttl.is_zero();
        let recoverable = history_on
            && (opts.force_recovery || (opts.allow_recovery && (req.recoverable || req.recover)));
        let positioned = history_on
            && (recoverable
                || opts.force_positioning
                || (opts.allow_positioning && req.positioned));
        Mode {
            recoverable,
            positioned,
            join_leave: opts.join_leave && (opts.force_push_join_leave || req.join_leave),
        }
    }

    /// Whether this subscribe recovers from the position in `req`.
    pub fn recovering(&self, req: &proto::SubscribeRequest) -> bool {
        self.positioned && self.recoverable && req.recover
    }
}

/// The most publications one recovery returns (`client.recovery_max_publication_limit`;
/// 0: no limit).
pub(super) fn limit(configured: usize) -> usize {
    match configured {
        0 => usize::MAX - 1,
        n => n,
    }
}

/// The history a positioned subscribe reads: from the client's position, one more than
/// `limit` (to tell a gap too long to recover), or only the stream's top.
pub(super) fn filter(
    req: &proto::SubscribeRequest,
    recovering: bool,
    limit: usize,
) -> HistoryFilter {
    if recovering {
        HistoryFilter {
            since: Some(StreamPosition {
                offset: req.offset,
                epoch: req.epoch.clone(),
            }),
            limit: Some(limit + 1),
            reverse: false,
        }
    } else {
        HistoryFilter {
            limit: Some(0),
            ..Default::default()
        }
    }
}

/// What a recovering subscribe gives the client: whether it recovered exactly (same epoch,
/// the publications right after its offset, no more than `limit`) and the publications to
/// send (none when the epoch changed; at most `limit`).
pub(super) fn outcome(
    history: &HistoryResult,
    req: &proto::SubscribeRequest,
    limit: usize,
) -> (bool, Vec<Arc<Publication>>) {
    let same_epoch = history.position.epoch == req.epoch;
    let pubs: &[Arc<Publication>] = if same_epoch {
        &history.publications
    } else {
        &[]
    };
    let complete = match pubs.first() {
        Some(first) => first.offset == req.offset + 1,
        None => history.position.offset == req.offset,
    };
    let recovered = same_epoch && complete && pubs.len() <= limit;
    (recovered, pubs.iter().take(limit).cloned().collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn history_opts() -> ChannelOptions {
        ChannelOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..Default::default()
        }
    }

    #[test]
    fn modes_need_history_and_follow_force_and_allow() {
        let asks = proto::SubscribeRequest {
            recoverable: true,
            positioned: true,
            join_leave: true,
            ..Default::default()
        };
        let none = Mode {
            recoverable: false,
            positioned: false,
            join_leave: false,
        };
        let forced = ChannelOptions {
            force_recovery: true,
            ..Default::default()
        };
        assert_eq!(Mode::of(&forced, &asks), none, "no history, no recovery");
        let opts = ChannelOptions {
            force_recovery: true,
            ..history_opts()
        };
        let m = Mode::of(&opts, &proto::SubscribeRequest::default());
        assert!(
            m.recoverable && m.positioned,
            "recovery implies positioning"
        );
        let opts = ChannelOptions {
            allow_recovery: true,
            ..history_opts()
        };
        assert!(!Mode::of(&opts, &proto::SubscribeRequest::default()).recoverable);
        assert!(Mode::of(&opts, &asks).recoverable, "allowed and asked");
        let opts = ChannelOptions {
            allow_positioning: true,
            join_leave: true,
            ..history_opts()
        };
        assert_eq!(
            Mode::of(&opts, &asks),
            Mode {
                recoverable: false,
                positioned: true,
                join_leave: true
            }
        );
        let opts = ChannelOptions {
            join_leave: true,
            force_push_join_leave: true,
            ..Default::default()
        };
        assert!(Mode::of(&opts, &proto::SubscribeRequest::default()).join_leave);
    }

    fn publication(offset: u64) -> Arc<Publication> {
        Arc::new(Publication {
            offset,
            ..Default::default()
        })
    }

    fn history(epoch: &str, top: u64, offsets: &[u64]) -> HistoryResult {
        HistoryResult {
            publications: offsets.iter().map(|o| publication(*o)).collect(),
            position: StreamPosition {
                offset: top,
                epoch: epoch.into(),
            },
        }
    }

    fn at(offset: u64, epoch: &str) -> proto::SubscribeRequest {
        proto::SubscribeRequest {
            recover: true,
            offset,
            epoch: epoch.into(),
            ..Default::default()
        }
    }

    fn offsets(pubs: &[Arc<Publication>]) -> Vec<u64> {
        pubs.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn recovery_is_exact_or_says_it_is_not() {
        let (ok, pubs) = outcome(&history("e", 5, &[4, 5]), &at(3, "e"), 10);
        assert!(ok);
        assert_eq!(offsets(&pubs), [4, 5]);
        let (ok, pubs) = outcome(&history("e", 3, &[]), &at(3, "e"), 10);
        assert!(ok && pubs.is_empty(), "nothing missed");
        let (ok, pubs) = outcome(&history("e", 9, &[6, 7, 8, 9]), &at(3, "e"), 10);
        assert!(!ok, "4 and 5 expired from history");
        assert_eq!(offsets(&pubs), [6, 7, 8, 9]);
        let (ok, pubs) = outcome(&history("new", 2, &[1, 2]), &at(3, "e"), 10);
        assert!(!ok && pubs.is_empty(), "another epoch: nothing of it");
        let (ok, pubs) = outcome(&history("e", 9, &[4, 5, 6]), &at(3, "e"), 2);
        assert!(!ok, "more than the limit (one extra read to tell)");
        assert_eq!(offsets(&pubs), [4, 5]);
    }

    #[test]
    fn filters_read_from_the_position_or_only_the_top() {
        let f = filter(&at(3, "e"), true, limit(2));
        assert_eq!(f.limit, Some(3));
        assert_eq!(f.since.map(|s| (s.offset, s.epoch)), Some((3, "e".into())));
        let f = filter(&at(3, "e"), false, limit(2));
        assert_eq!((f.limit, f.since.is_none()), (Some(0), true));
        assert_eq!(
            limit(0),
            usize::MAX - 1,
            "0: no limit (and room for the extra one)"
        );
    }
}
