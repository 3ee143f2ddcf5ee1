//! Who may do what on a channel, decided from the configuration and what the session knows
//! of its client alone: no I/O, no session state. The session asks; proxy hooks (which may
//! decide instead of these rules) will sit beside the calls, not inside them.

use bytes::Bytes;

use crate::auth::{SubscribeClaims, TokenError};
use crate::config::{ChannelConfig, ChannelOptions};
use crate::error::ClientError;

/// Channel operations whose permission the namespace options decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Operation {
    Publish,
    Presence,
    History,
}

/// The client asking, as far as permissions go.
#[derive(Clone, Copy, Debug)]
pub(super) struct Asker<'a> {
    /// The user id; empty for an anonymous client.
    pub user: &'a str,
    /// `client.insecure`: every operation is allowed.
    pub insecure: bool,
}

/// Whether the client may `op` on a channel with `opts`: the namespace's
/// `allow_<op>_for_subscriber` (when `subscribed`), `_for_client` (a user) or
/// `_for_anonymous` option, as Centrifugo.
pub(super) fn may(
    op: Operation,
    opts: &ChannelOptions,
    asker: Asker<'_>,
    subscribed: bool,
) -> bool {
    let (for_subscriber, for_client, for_anonymous) = match op {
        Operation::Publish => (
            opts.allow_publish_for_subscriber,
            opts.allow_publish_for_client,
            opts.allow_publish_for_anonymous,
        ),
        Operation::Presence => (
            opts.allow_presence_for_subscriber,
            opts.allow_presence_for_client,
            opts.allow_presence_for_anonymous,
        ),
        Operation::History => (
            opts.allow_history_for_subscriber,
            opts.allow_history_for_client,
            opts.allow_history_for_anonymous,
        ),
    };
    asker.insecure
        || (for_subscriber && subscribed)
        || if asker.user.is_empty() {
            for_anonymous
        } else {
            for_client
        }
}

/// Whether the client may subscribe to `channel` without a subscription token: never to a
/// private channel (`channel.private_prefix`); to a user-limited channel
/// (`name#user1,user2`, with `allow_user_limited_channels`) only when it names the user;
/// otherwise by `allow_subscribe_for_client` / `_for_anonymous`.
pub(super) fn may_subscribe(
    channel: &str,
    opts: &ChannelOptions,
    cfg: &ChannelConfig,
    asker: Asker<'_>,
) -> bool {
    if asker.insecure {
        return true;
    }
    if !cfg.private_prefix.is_empty() && channel.starts_with(&cfg.private_prefix) {
        return false;
    }
    if opts.allow_user_limited_channels
        && let Some((_, users)) = channel.split_once(&cfg.user_boundary)
    {
        return !asker.user.is_empty() && users.split(&cfg.user_separator).any(|u| u == asker.user);
    }
    if asker.user.is_empty() {
        opts.allow_subscribe_for_anonymous
    } else {
        opts.allow_subscribe_for_client
    }
}

/// What a verified (or refused) subscription token grants for `channel` to `user` at
/// `now_secs`: the channel info and when the subscription expires, or the error the client
/// gets (103 for a token of another channel or user or a forged one, 109 for an expired one).
pub(super) fn subscription_grant(
    verified: Result<SubscribeClaims, TokenError>,
    channel: &str,
    user: &str,
    now_secs: i64,
) -> Result<(Bytes, Option<i64>), ClientError> {
    match verified {
        Ok(claims) if claims.channel == channel && claims.user == user => {
            let expire_at = claims.expire_at.filter(|at| *at > 0);
            if expire_at.is_some_and(|at| at <= now_secs) {
                return Err(ClientError::TOKEN_EXPIRED);
            }
            Ok((claims.info.unwrap_or_default(), expire_at))
        }
        Ok(_) | Err(TokenError::Invalid(_)) => Err(ClientError::PERMISSION_DENIED),
        Err(TokenError::Expired) => Err(ClientError::TOKEN_EXPIRED),
        Err(TokenError::Unavailable(_)) => Err(ClientError::INTERNAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Asker<'static> = Asker {
        user: "alice",
        insecure: false,
    };
    const ANONYMOUS: Asker<'static> = Asker {
        user: "",
        insecure: false,
    };

    #[test]
    fn operations_follow_the_subscriber_client_and_anonymous_options() {
        let mut opts = ChannelOptions::default();
        for op in [Operation::Publish, Operation::Presence, Operation::History] {
            assert!(!may(op, &opts, ALICE, true), "{op:?} off by default");
            assert!(may(
                op,
                &opts,
                Asker {
                    insecure: true,
                    ..ANONYMOUS
                },
                false
            ));
        }
        opts.allow_publish_for_subscriber = true;
        assert!(may(Operation::Publish, &opts, ALICE, true));
        assert!(!may(Operation::Publish, &opts, ALICE, false));
        assert!(
            !may(Operation::Presence, &opts, ALICE, true),
            "options are per operation"
        );
        opts.allow_history_for_client = true;
        assert!(may(Operation::History, &opts, ALICE, false));
        assert!(
            !may(Operation::History, &opts, ANONYMOUS, false),
            "a client is a user"
        );
        opts.allow_presence_for_anonymous = true;
        assert!(may(Operation::Presence, &opts, ANONYMOUS, false));
        assert!(
            !may(Operation::Presence, &opts, ALICE, false),
            "anonymous only"
        );
    }

    #[test]
    fn subscribing_without_a_token() {
        let cfg = ChannelConfig::default();
        let mut opts = ChannelOptions {
            allow_subscribe_for_client: true,
            ..Default::default()
        };
        assert!(may_subscribe("chat", &opts, &cfg, ALICE));
        assert!(!may_subscribe("chat", &opts, &cfg, ANONYMOUS));
        opts.allow_subscribe_for_anonymous = true;
        assert!(may_subscribe("chat", &opts, &cfg, ANONYMOUS));

        let private = format!("{}secret", cfg.private_prefix);
        assert!(!cfg.private_prefix.is_empty());
        assert!(
            !may_subscribe(&private, &opts, &cfg, ALICE),
            "private needs a token"
        );
        assert!(may_subscribe(
            &private,
            &opts,
            &cfg,
            Asker {
                insecure: true,
                ..ALICE
            }
        ));

        opts.allow_user_limited_channels = true;
        let limited = |users: &str| format!("dm{}{users}", cfg.user_boundary);
        let both = limited(&format!("alice{}bob", cfg.user_separator));
        assert!(may_subscribe(&both, &opts, &cfg, ALICE));
        assert!(!may_subscribe(&limited("bob"), &opts, &cfg, ALICE));
        assert!(
            !may_subscribe(&limited(""), &opts, &cfg, ANONYMOUS),
            "never anonymous"
        );
    }

    #[test]
    fn subscription_tokens_grant_their_channel_to_their_user_until_they_expire() {
        let claims = |channel: &str, user: &str, expire_at: Option<i64>| {
            Ok(SubscribeClaims {
                user: user.into(),
                channel: channel.into(),
                expire_at,
                info: Some(Bytes::from_static(b"{\"a\":1}")),
            })
        };
        assert_eq!(
            subscription_grant(claims("c", "alice", Some(200)), "c", "alice", 100),
            Ok((Bytes::from_static(b"{\"a\":1}"), Some(200)))
        );
        assert_eq!(
            subscription_grant(claims("c", "alice", Some(0)), "c", "alice", 100),
            Ok((Bytes::from_static(b"{\"a\":1}"), None)),
            "exp 0 means no expiry"
        );
        for (verified, why) in [
            (claims("other", "alice", None), "another channel"),
            (claims("c", "bob", None), "another user"),
            (Err(TokenError::Invalid("forged".into())), "forged"),
        ] {
            assert_eq!(
                subscription_grant(verified, "c", "alice", 100),
                Err(ClientError::PERMISSION_DENIED),
                "{why}"
            );
        }
        for verified in [claims("c", "alice", Some(100)), Err(TokenError::Expired)] {
            assert_eq!(
                subscription_grant(verified, "c", "alice", 100),
                Err(ClientError::TOKEN_EXPIRED)
            );
        }
    }
}
