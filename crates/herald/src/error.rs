//! Client-visible error and disconnect codes: a stable table shared with the Centrifugo
//! protocol, documented in docs/codes.md.
//!
//! Ranges: errors 100-399 answer one command and keep the connection; disconnect codes
//! 3000-3499 tell the client to reconnect, 3500-3999 tell it not to; unsubscribe codes
//! 2000-2499 end a subscription for good, 2500-2999 ask the client to resubscribe.

use std::borrow::Cow;

use crate::protocol::proto;

/// An error reply to one command. The connection stays open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    /// Stable numeric code from the table below.
    pub code: u32,
    /// Short human-readable text.
    pub message: Cow<'static, str>,
    /// The client may retry the same command later.
    pub temporary: bool,
}

macro_rules! client_errors {
    ($($name:ident = $code:literal, $msg:literal, $temp:literal;)*) => {
        impl ClientError {
            $(
                #[doc = concat!("Code ", stringify!($code), ": ", $msg, ".")]
                pub const $name: ClientError = ClientError { code: $code, message: Cow::Borrowed($msg), temporary: $temp };
            )*
            /// Every error of the table, for documentation and tests.
            pub const ALL: &'static [ClientError] = &[$(ClientError::$name),*];
        }
    };
}

client_errors! {
    INTERNAL = 100, "internal server error", true;
    UNAUTHORIZED = 101, "unauthorized", false;
    UNKNOWN_CHANNEL = 102, "unknown channel", false;
    PERMISSION_DENIED = 103, "permission denied", false;
    METHOD_NOT_FOUND = 104, "method not found", false;
    ALREADY_SUBSCRIBED = 105, "already subscribed", false;
    LIMIT_EXCEEDED = 106, "limit exceeded", false;
    BAD_REQUEST = 107, "bad request", false;
    NOT_AVAILABLE = 108, "not available", false;
    TOKEN_EXPIRED = 109, "token expired", false;
    EXPIRED = 110, "expired", false;
    TOO_MANY_REQUESTS = 111, "too many requests", true;
    UNRECOVERABLE_POSITION = 112, "unrecoverable position", false;
}

impl ClientError {
    /// The same error with a more specific message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::Error {
        proto::Error {
            code: self.code,
            message: self.message.to_string(),
            temporary: self.temporary,
        }
    }
}

/// Why the server closes a connection. Codes below 3500 invite a reconnect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("disconnect {code}: {reason}")]
pub struct Disconnect {
    /// Close code sent to the client (WebSocket close code, or in a Disconnect push).
    pub code: u32,
    /// Short reason, at most 123 bytes so it fits a WebSocket close frame.
    pub reason: Cow<'static, str>,
}

macro_rules! disconnects {
    ($($name:ident = $code:literal, $reason:literal;)*) => {
        impl Disconnect {
            $(
                #[doc = concat!("Code ", stringify!($code), ": ", $reason, ".")]
                pub const $name: Disconnect = Disconnect { code: $code, reason: Cow::Borrowed($reason) };
            )*
            /// Every disconnect of the table, for documentation and tests.
            pub const ALL: &'static [Disconnect] = &[$(Disconnect::$name),*];
        }
    };
}

disconnects! {
    CONNECTION_CLOSED = 3000, "connection closed";
    SHUTDOWN = 3001, "shutdown";
    SERVER_ERROR = 3004, "internal server error";
    EXPIRED = 3005, "connection expired";
    SUBSCRIPTION_EXPIRED = 3006, "subscription expired";
    SLOW = 3008, "slow";
    WRITE_ERROR = 3009, "write error";
    INSUFFICIENT_STATE = 3010, "insufficient state";
    FORCE_RECONNECT = 3011, "force reconnect";
    NO_PONG = 3012, "no pong";
    TOO_MANY_REQUESTS = 3013, "too many requests";
    INVALID_TOKEN = 3500, "invalid token";
    BAD_REQUEST = 3501, "bad request";
    STALE = 3502, "stale";
    FORCE_NO_RECONNECT = 3503, "force disconnect";
    CONNECTION_LIMIT = 3504, "connection limit";
    CHANNEL_LIMIT = 3505, "channel limit";
    INAPPROPRIATE_PROTOCOL = 3506, "inappropriate protocol";
    PERMISSION_DENIED = 3507, "permission denied";
    NOT_AVAILABLE = 3508, "not available";
    TOO_MANY_ERRORS = 3509, "too many errors";
}

impl Disconnect {
    /// A disconnect with a code and reason chosen at run time (server API).
    pub fn custom(code: u32, reason: impl Into<Cow<'static, str>>) -> Self {
        Disconnect {
            code,
            reason: reason.into(),
        }
    }

    /// Whether the client should reconnect after this disconnect.
    pub fn reconnect(&self) -> bool {
        !(3500..=3999).contains(&self.code) && !(4500..=4999).contains(&self.code)
    }

    /// The wire form, for transports that send disconnects as a push.
    pub fn to_proto(&self) -> proto::Disconnect {
        proto::Disconnect {
            code: self.code,
            reason: self.reason.to_string(),
        }
    }
}

/// Unsubscribe codes sent in an Unsubscribe push.
pub mod unsubscribe {
    /// The server ended the subscription (API unsubscribe); do not resubscribe.
    pub const SERVER: (u32, &str) = (2000, "server unsubscribe");
    /// The server lost state for the subscription; resubscribe.
    pub const INSUFFICIENT_STATE: (u32, &str) = (2500, "insufficient state");
    /// The subscription token expired and was not refreshed; resubscribe with a new one.
    pub const EXPIRED: (u32, &str) = (2501, "subscription expired");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_their_ranges() {
        let mut seen = std::collections::HashSet::new();
        for e in ClientError::ALL {
            assert!((100..400).contains(&e.code) && seen.insert(e.code));
        }
        for d in Disconnect::ALL {
            assert!((3000..4000).contains(&d.code) && seen.insert(d.code));
            assert!(d.reason.len() <= 123);
        }
        assert!(Disconnect::SLOW.reconnect() && !Disconnect::INVALID_TOKEN.reconnect());
    }
}
