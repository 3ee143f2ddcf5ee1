//! The server API over gRPC: service `centrifugal.centrifugo.api.CentrifugoApi`
//! (`proto/api.proto`), shaped like Centrifugo's so that clients generated from its schema
//! work, on the main listener when `grpc_api.enabled` (native gRPC over h2c or TLS, and
//! gRPC-Web through tonic-web), and on `grpc_api.port` when set.
//!
//! This module only decodes requests and encodes results: the methods are
//! [`crate::api::Executor`]'s, as for the HTTP API. Requests are authenticated with
//! metadata `authorization: apikey <KEY>`: `grpc_api.key` when set, otherwise like the
//! HTTP API (`http_api.key`; none needed with `http_api.insecure`); without it the call
//! fails with UNAUTHENTICATED. A method-level failure is not a gRPC error: as in
//! Centrifugo, the response's `error` carries the code and message and `result` is empty.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::{self, Executor};
use crate::engine::{ClientInfo, Publication};
use crate::node::Node;

/// Generated messages, server and client of `centrifugal.centrifugo.api`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/centrifugal.centrifugo.api.rs"));
}

use proto::centrifugo_api_server::{CentrifugoApi, CentrifugoApiServer};

/// Routes of the gRPC server API (empty unless `grpc_api.enabled`), to merge into the main
/// router; wrapped in tonic-web so browsers and gRPC-Web proxies can call it.
pub fn router(node: &Arc<Node>) -> axum::Router {
    let router = axum::Router::new();
    if !node.config.grpc_api.enabled {
        return router;
    }
    let svc = tower::Layer::layer(
        &tonic_web::GrpcWebLayer::new(),
        CentrifugoApiServer::new(GrpcApi {
            executor: Executor::new(node.clone()),
        }),
    );
    router.route_service(
        &format!(
            "/{}/{{*method}}",
            <CentrifugoApiServer<GrpcApi> as tonic::server::NamedService>::NAME
        ),
        svc,
    )
}

struct GrpcApi {
    executor: Executor,
}

impl GrpcApi {
    /// The request's message once its API key checks out.
    fn authorize<T>(&self, req: Request<T>) -> Result<T, Status> {
        let (metadata, _, message) = req.into_parts();
        let headers = metadata.into_headers();
        let node = self.executor.node();
        let own_key = &node.config.grpc_api.key;
        let ok = if own_key.is_empty() {
            crate::api::authorized(node, &headers)
        } else {
            crate::api::key_matches(&headers, own_key)
        };
        if ok {
            Ok(message)
        } else {
            Err(Status::unauthenticated(
                "unauthorized: missing or wrong API key",
            ))
        }
    }
}

/// Builds a `…Response { error, result }` from a method's outcome, encoding the result.
macro_rules! respond {
    ($response:ident, $outcome:expr) => {
        Ok(Response::new(match $outcome {
            Ok(result) => proto::$response {
                error: None,
                result: Some(result.into()),
            },
            Err(e) => proto::$response {
                error: Some(api::ApiError::from(e).into()),
                result: None,
            },
        }))
    };
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

// ---- requests: proto to the executor's ----

impl From<proto::PublishRequest> for api::PublishRequest {
    fn from(r: proto::PublishRequest) -> Self {
        api::PublishRequest {
            channel: r.channel,
            data: (!r.data.is_empty()).then_some(r.data),
            b64data: non_empty(r.b64data),
            skip_history: r.skip_history,
            tags: r.tags,
            idempotency_key: non_empty(r.idempotency_key),
        }
    }
}

impl From<proto::BroadcastRequest> for api::BroadcastRequest {
    fn from(r: proto::BroadcastRequest) -> Self {
        api::BroadcastRequest {
            channels: r.channels,
            data: (!r.data.is_empty()).then_some(r.data),
            b64data: non_empty(r.b64data),
            skip_history: r.skip_history,
            tags: r.tags,
            idempotency_key: non_empty(r.idempotency_key),
        }
    }
}

impl From<proto::SubscribeRequest> for api::UserChannelRequest {
    fn from(r: proto::SubscribeRequest) -> Self {
        api::UserChannelRequest {
            user: r.user,
            channel: r.channel,
            client: non_empty(r.client),
        }
    }
}

impl From<proto::UnsubscribeRequest> for api::UserChannelRequest {
    fn from(r: proto::UnsubscribeRequest) -> Self {
        api::UserChannelRequest {
            user: r.user,
            channel: r.channel,
            client: non_empty(r.client),
        }
    }
}

impl From<proto::DisconnectRequest> for api::DisconnectRequest {
    fn from(r: proto::DisconnectRequest) -> Self {
        api::DisconnectRequest {
            user: r.user,
            client: non_empty(r.client),
            whitelist: r.whitelist,
            disconnect: r.disconnect.map(|d| api::DisconnectSpec {
                code: d.code,
                reason: d.reason,
            }),
        }
    }
}

impl From<proto::RefreshRequest> for api::RefreshRequest {
    fn from(r: proto::RefreshRequest) -> Self {
        api::RefreshRequest {
            user: r.user,
            client: non_empty(r.client),
            expired: r.expired,
            expire_at: Some(r.expire_at),
        }
    }
}

macro_rules! channel_request {
    ($($t:ty),*) => {$(
        impl From<$t> for api::ChannelRequest {
            fn from(r: $t) -> Self {
                api::ChannelRequest { channel: r.channel }
            }
        }
    )*};
}
channel_request!(
    proto::PresenceRequest,
    proto::PresenceStatsRequest,
    proto::HistoryRemoveRequest
);

impl From<proto::HistoryRequest> for api::HistoryRequest {
    fn from(r: proto::HistoryRequest) -> Self {
        api::HistoryRequest {
            channel: r.channel,
            limit: Some(i64::from(r.limit)),
            since: r.since.map(|s| api::PositionSpec {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: r.reverse,
        }
    }
}

impl From<proto::ChannelsRequest> for api::ChannelsRequest {
    fn from(r: proto::ChannelsRequest) -> Self {
        api::ChannelsRequest { pattern: r.pattern }
    }
}

impl From<proto::Command> for api::Command {
    fn from(c: proto::Command) -> Self {
        api::Command {
            publish: c.publish.map(Into::into),
            broadcast: c.broadcast.map(Into::into),
            subscribe: c.subscribe.map(Into::into),
            unsubscribe: c.unsubscribe.map(Into::into),
            disconnect: c.disconnect.map(Into::into),
            presence: c.presence.map(Into::into),
            presence_stats: c.presence_stats.map(Into::into),
            history: c.history.map(Into::into),
            history_remove: c.history_remove.map(Into::into),
            info: c.info.map(|_| api::InfoRequest {}),
            refresh: c.refresh.map(Into::into),
            channels: c.channels.map(Into::into),
        }
    }
}

// ---- results: the executor's to proto ----

impl From<api::ApiError> for proto::Error {
    fn from(e: api::ApiError) -> Self {
        proto::Error {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<api::PublishResult> for proto::PublishResult {
    fn from(r: api::PublishResult) -> Self {
        proto::PublishResult {
            offset: r.offset,
            epoch: r.epoch,
        }
    }
}

impl From<api::BroadcastResult> for proto::BroadcastResult {
    fn from(r: api::BroadcastResult) -> Self {
        proto::BroadcastResult {
            responses: r
                .responses
                .into_iter()
                .map(|p| proto::PublishResponse {
                    error: p.error.map(Into::into),
                    result: p.result.map(Into::into),
                })
                .collect(),
        }
    }
}

macro_rules! empty_result {
    ($($t:ident),*) => {$(
        impl From<api::Empty> for proto::$t {
            fn from(_: api::Empty) -> Self {
                proto::$t {}
            }
        }
    )*};
}
empty_result!(
    SubscribeResult,
    UnsubscribeResult,
    DisconnectResult,
    RefreshResult,
    HistoryRemoveResult
);

fn client_info(i: &ClientInfo) -> proto::ClientInfo {
    proto::ClientInfo {
        user: i.user.clone(),
        client: i.client.clone(),
        conn_info: i.conn_info.clone(),
        chan_info: i.chan_info.clone(),
    }
}

fn publication(p: &Publication) -> proto::Publication {
    proto::Publication {
        data: p.data.clone(),
        info: p.info.as_ref().map(client_info),
        offset: p.offset,
        tags: p.tags.clone(),
    }
}

impl From<api::PresenceResult> for proto::PresenceResult {
    fn from(r: api::PresenceResult) -> Self {
        proto::PresenceResult {
            presence: r
                .presence
                .iter()
                .map(|(k, v)| (k.clone(), client_info(v)))
                .collect(),
        }
    }
}

impl From<api::PresenceStatsResult> for proto::PresenceStatsResult {
    fn from(r: api::PresenceStatsResult) -> Self {
        proto::PresenceStatsResult {
            num_clients: r.num_clients,
            num_users: r.num_users,
        }
    }
}

impl From<api::HistoryResult> for proto::HistoryResult {
    fn from(r: api::HistoryResult) -> Self {
        proto::HistoryResult {
            publications: r.publications.iter().map(|p| publication(p)).collect(),
            epoch: r.epoch,
            offset: r.offset,
        }
    }
}

impl From<api::ChannelsResult> for proto::ChannelsResult {
    fn from(r: api::ChannelsResult) -> Self {
        proto::ChannelsResult {
            channels: r
                .channels
                .into_iter()
                .map(|(name, c)| {
                    (
                        name,
                        proto::ChannelInfo {
                            num_clients: c.num_clients,
                        },
                    )
                })
                .collect(),
        }
    }
}

impl From<api::InfoResult> for proto::InfoResult {
    fn from(r: api::InfoResult) -> Self {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        proto::InfoResult {
            nodes: r
                .nodes
                .into_iter()
                .map(|i| proto::NodeResult {
                    uid: i.uid,
                    name: i.name,
                    version: i.version,
                    num_clients: count(i.num_clients),
                    num_users: count(i.num_users),
                    num_channels: count(i.num_channels),
                    uptime: u32::try_from(i.uptime).unwrap_or(u32::MAX),
                    num_subs: count(i.num_subs),
                })
                .collect(),
        }
    }
}

impl From<api::Reply> for proto::Reply {
    fn from(r: api::Reply) -> Self {
        proto::Reply {
            error: r.error.map(Into::into),
            publish: r.publish.map(Into::into),
            broadcast: r.broadcast.map(Into::into),
            subscribe: r.subscribe.map(Into::into),
            unsubscribe: r.unsubscribe.map(Into::into),
            disconnect: r.disconnect.map(Into::into),
            presence: r.presence.map(Into::into),
            presence_stats: r.presence_stats.map(Into::into),
            history: r.history.map(Into::into),
            history_remove: r.history_remove.map(Into::into),
            info: r.info.map(Into::into),
            refresh: r.refresh.map(Into::into),
            channels: r.channels.map(Into::into),
        }
    }
}

#[tonic::async_trait]
impl CentrifugoApi for GrpcApi {
    async fn batch(
        &self,
        request: Request<proto::BatchRequest>,
    ) -> Result<Response<proto::BatchResponse>, Status> {
        let r = self.authorize(request)?;
        let result = self
            .executor
            .batch(api::BatchRequest {
                commands: r.commands.into_iter().map(|c| Some(c.into())).collect(),
                parallel: r.parallel,
            })
            .await;
        Ok(Response::new(proto::BatchResponse {
            replies: result.replies.into_iter().map(Into::into).collect(),
        }))
    }

    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(PublishResponse, self.executor.publish(r.into()).await)
    }

    async fn broadcast(
        &self,
        request: Request<proto::BroadcastRequest>,
    ) -> Result<Response<proto::BroadcastResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(BroadcastResponse, self.executor.broadcast(r.into()).await)
    }

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<proto::SubscribeResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(SubscribeResponse, self.executor.subscribe(r.into()).await)
    }

    async fn unsubscribe(
        &self,
        request: Request<proto::UnsubscribeRequest>,
    ) -> Result<Response<proto::UnsubscribeResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(
            UnsubscribeResponse,
            self.executor.unsubscribe(r.into()).await
        )
    }

    async fn disconnect(
        &self,
        request: Request<proto::DisconnectRequest>,
    ) -> Result<Response<proto::DisconnectResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(DisconnectResponse, self.executor.disconnect(r.into()).await)
    }

    async fn presence(
        &self,
        request: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(PresenceResponse, self.executor.presence(r.into()).await)
    }

    async fn presence_stats(
        &self,
        request: Request<proto::PresenceStatsRequest>,
    ) -> Result<Response<proto::PresenceStatsResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(
            PresenceStatsResponse,
            self.executor.presence_stats(r.into()).await
        )
    }

    async fn history(
        &self,
        request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(HistoryResponse, self.executor.history(r.into()).await)
    }

    async fn history_remove(
        &self,
        request: Request<proto::HistoryRemoveRequest>,
    ) -> Result<Response<proto::HistoryRemoveResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(
            HistoryRemoveResponse,
            self.executor.history_remove(r.into()).await
        )
    }

    async fn info(
        &self,
        request: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoResponse>, Status> {
        self.authorize(request)?;
        respond!(InfoResponse, self.executor.info(api::InfoRequest {}).await)
    }

    async fn refresh(
        &self,
        request: Request<proto::RefreshRequest>,
    ) -> Result<Response<proto::RefreshResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(RefreshResponse, self.executor.refresh(r.into()).await)
    }

    async fn channels(
        &self,
        request: Request<proto::ChannelsRequest>,
    ) -> Result<Response<proto::ChannelsResponse>, Status> {
        let r = self.authorize(request)?;
        respond!(ChannelsResponse, self.executor.channels(r.into()).await)
    }
}
