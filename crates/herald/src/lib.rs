//! Herald: a real-time push server that speaks the Centrifugo client protocol.
//!
//! Module map, top to bottom (imports only flow downwards; transports never import each
//! other):
//! - [`server`]: listeners, routing, graceful shutdown; [`listener`]: sockets, backlog and
//!   the deadline before a connection's protocol is known.
//! - [`transport`] adapters, the server [`api`] and the [`web`] pages (chat demo, console);
//!   [`request_body`]: the size limit and deadline every request body is read under.
//! - [`session`]: one connection's state machine.
//! - [`node`]: the composition root and server-side operations.
//! - [`hub`] (local fan-out) and [`engine`] (broker and presence behind traits).
//! - [`protocol`] (wire types and codecs), [`auth`] (tokens to credentials) and [`proxy`]
//!   (calls to the application's backend, through [`http_client`] when over HTTP).
//! - [`config`], [`metrics`], [`error`], [`glob`] (the one pattern matcher), [`rate`] (the one
//!   rate limiter).
//!
//! Invariants: a publication is encoded once per encoding and shared as `Bytes`; every
//! client queue is bounded; every channel's publications reach each subscriber in offset
//! order; a client that recovers gets exactly what it missed or is told it did not.

pub mod api;
pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod glob;
pub mod grpc_api;
pub mod http_client;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod proxy;
pub mod rate;
pub mod request_body;
pub mod server;
pub mod session;
pub mod transport;
pub mod web;
