//! The server API over gRPC: service `centrifugal.centrifugo.api.CentrifugoApi`
//! (`proto/api.proto`), shaped like Centrifugo's so that clients generated from its schema
//! work, on the main listener when `grpc_api.enabled` (native gRPC over h2c or TLS, and
//! gRPC-Web through tonic-web), and on `grpc_api.port` when set.
//!
//! The same operations as the HTTP API ([`crate::api`]), through the node. Requests are
//! authenticated with metadata `authorization: apikey <KEY>`: `grpc_api.key` when set,
//! otherwise like the HTTP API (`http_api.key`; none needed with `http_api.insecure`);
//! without it the call fails with UNAUTHENTICATED. A method-level failure is not a gRPC error: as in Centrifugo, the
//! response's `error` carries the code and message and `result` is empty.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use tonic::{Request, Response, Status};

use crate::engine::{ClientInfo, HistoryFilter, Publication, StreamPosition};
use crate::error::{ClientError, Disconnect};
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
        CentrifugoApiServer::new(GrpcApi { node: node.clone() }),
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
    node: Arc<Node>,
}

impl GrpcApi {
    /// The request's message once its API key checks out.
    fn authorize<T>(&self, req: Request<T>) -> Result<T, Status> {
        let (metadata, _, message) = req.into_parts();
        let headers = metadata.into_headers();
        let own_key = &self.node.config.grpc_api.key;
        let ok = if own_key.is_empty() {
            crate::api::authorized(&self.node, &headers)
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

/// Builds a `…Response { error, result }` from a method's outcome.
macro_rules! respond {
    ($response:ident, $outcome:expr) => {
        Ok(Response::new(match $outcome {
            Ok(result) => proto::$response {
                error: None,
                result: Some(result),
            },
            Err(e) => proto::$response {
                error: Some(api_error(e)),
                result: None,
            },
        }))
    };
}

fn api_error(e: ClientError) -> proto::Error {
    proto::Error {
        code: e.code,
        message: e.message.to_string(),
    }
}

/// `b64data` when set, else `data`, which must not be empty.
fn payload(data: bytes::Bytes, b64data: &str) -> Result<bytes::Bytes, ClientError> {
    if !b64data.is_empty() {
        return base64::engine::general_purpose::STANDARD
            .decode(b64data)
            .map(bytes::Bytes::from)
            .map_err(|_| ClientError::BAD_REQUEST.with_message("b64data is not valid base64"));
    }
    if data.is_empty() {
        return Err(ClientError::BAD_REQUEST.with_message("data required"));
    }
    Ok(data)
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

async fn publish_one(
    node: &Node,
    channel: &str,
    data: bytes::Bytes,
    tags: HashMap<String, String>,
    skip_history: bool,
) -> Result<proto::PublishResult, ClientError> {
    let pos = node
        .publish(channel, data, None, tags, skip_history)
        .await?;
    Ok(proto::PublishResult {
        offset: pos.offset,
        epoch: if pos.offset > 0 {
            pos.epoch
        } else {
            String::new()
        },
    })
}

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

#[tonic::async_trait]
impl CentrifugoApi for GrpcApi {
    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        let r = self.authorize(request)?;
        let outcome = match payload(r.data, &r.b64data) {
            Ok(data) => publish_one(&self.node, &r.channel, data, r.tags, r.skip_history).await,
            Err(e) => Err(e),
        };
        respond!(PublishResponse, outcome)
    }

    async fn broadcast(
        &self,
        request: Request<proto::BroadcastRequest>,
    ) -> Result<Response<proto::BroadcastResponse>, Status> {
        let r = self.authorize(request)?;
        let outcome = async {
            if r.channels.is_empty() {
                return Err(ClientError::BAD_REQUEST.with_message("channels required"));
            }
            let data = payload(r.data, &r.b64data)?;
            let mut responses = Vec::with_capacity(r.channels.len());
            for channel in &r.channels {
                let one = publish_one(
                    &self.node,
                    channel,
                    data.clone(),
                    r.tags.clone(),
                    r.skip_history,
                )
                .await;
                responses.push(match one {
                    Ok(result) => proto::PublishResponse {
                        error: None,
                        result: Some(result),
                    },
                    Err(e) => proto::PublishResponse {
                        error: Some(api_error(e)),
                        result: None,
                    },
                });
            }
            Ok(proto::BroadcastResult { responses })
        }
        .await;
        respond!(BroadcastResponse, outcome)
    }

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<proto::SubscribeResponse>, Status> {
        let r = self.authorize(request)?;
        let outcome = self
            .node
            .subscribe_user(&r.user, non_empty(&r.client), &r.channel)
            .await
            .map_err(ClientError::from)
            .map(|()| proto::SubscribeResult {});
        respond!(SubscribeResponse, outcome)
    }

    async fn unsubscribe(
        &self,
        request: Request<proto::UnsubscribeRequest>,
    ) -> Result<Response<proto::UnsubscribeResponse>, Status> {
        let r = self.authorize(request)?;
        let outcome = self
            .node
            .unsubscribe_user(&r.user, non_empty(&r.client), &r.channel)
            .await
            .map_err(ClientError::from)
            .map(|()| proto::UnsubscribeResult {});
        respond!(UnsubscribeResponse, outcome)
    }

    async fn disconnect(
        &self,
        request: Request<proto::DisconnectRequest>,
    ) -> Result<Response<proto::DisconnectResponse>, Status> {
        let r = self.authorize(request)?;
        let disconnect = match r.disconnect {
            Some(spec) if !(3000..5000).contains(&spec.code) => {
                Err(ClientError::BAD_REQUEST.with_message("disconnect.code must be in 3000..4999"))
            }
            Some(spec) => Ok(Disconnect::custom(
                spec.code,
                spec.reason.chars().take(100).collect::<String>(),
            )),
            None => Ok(Disconnect::FORCE_NO_RECONNECT),
        };
        let outcome = match disconnect {
            Ok(d) => self
                .node
                .disconnect_user(&r.user, non_empty(&r.client), &r.whitelist, &d)
                .await
                .map_err(ClientError::from)
                .map(|()| proto::DisconnectResult {}),
            Err(e) => Err(e),
        };
        respond!(DisconnectResponse, outcome)
    }

    async fn presence(
        &self,
        request: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        let r = self.authorize(request)?;
        let outcome = self
            .node
            .presence(&r.channel)
            .await
            .map_err(ClientError::from)
            .map(|p| proto::PresenceResult {
                presence: p.iter().map(|(k, v)| (k.clone(), client_info(v))).collect(),
            });
        respond!(PresenceResponse, outcome)
    }

    async fn presence_stats(
        &self,
        request: Request<proto::PresenceStatsRequest>,
    ) -> Result<Response<proto::PresenceStatsResponse>, Status> {
        let r = self.authorize(request)?;
        let outcome = self
            .node
            .presence_stats(&r.channel)
            .await
            .map_err(ClientError::from)
            .map(|(num_clients, num_users)| proto::PresenceStatsResult {
                num_clients,
                num_users,
            });
        respond!(PresenceStatsResponse, outcome)
    }

    async fn history(
        &self,
        request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryResponse>, Status> {
        let r = self.authorize(request)?;
        let filter = HistoryFilter {
            since: r.since.map(|s| StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            limit: match r.limit {
                n if n < 0 => None,
                n => Some(n as usize),
            },
            reverse: r.reverse,
        };
        let outcome = self
            .node
            .history(&r.channel, &filter)
            .await
            .map_err(ClientError::from)
            .map(|h| proto::HistoryResult {
                publications: h.publications.iter().map(|p| publication(p)).collect(),
                epoch: h.position.epoch,
                offset: h.position.offset,
            });
        respond!(HistoryResponse, outcome)
    }

    async fn history_remove(
        &self,
        request: Request<proto::HistoryRemoveRequest>,
    ) -> Result<Response<proto::HistoryRemoveResponse>, Status> {
        let r = self.authorize(request)?;
        let outcome = self
            .node
            .remove_history(&r.channel)
            .await
            .map_err(ClientError::from)
            .map(|()| proto::HistoryRemoveResult {});
        respond!(HistoryRemoveResponse, outcome)
    }

    async fn info(
        &self,
        request: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoResponse>, Status> {
        self.authorize(request)?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let nodes = self
            .node
            .nodes()
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
            .collect();
        respond!(InfoResponse, Ok(proto::InfoResult { nodes }))
    }

    async fn refresh(
        &self,
        request: Request<proto::RefreshRequest>,
    ) -> Result<Response<proto::RefreshResponse>, Status> {
        let r = self.authorize(request)?;
        let outcome = self
            .node
            .refresh_user(
                &r.user,
                non_empty(&r.client),
                (r.expire_at > 0).then_some(r.expire_at),
                r.expired,
            )
            .await
            .map_err(ClientError::from)
            .map(|()| proto::RefreshResult {});
        respond!(RefreshResponse, outcome)
    }

    async fn channels(
        &self,
        request: Request<proto::ChannelsRequest>,
    ) -> Result<Response<proto::ChannelsResponse>, Status> {
        let r = self.authorize(request)?;
        let channels = self
            .node
            .channels()
            .into_iter()
            .filter(|(name, _)| r.pattern.is_empty() || crate::glob::matches(&r.pattern, name))
            .map(|(name, n)| {
                let num_clients = u32::try_from(n).unwrap_or(u32::MAX);
                (name, proto::ChannelInfo { num_clients })
            })
            .collect();
        respond!(ChannelsResponse, Ok(proto::ChannelsResult { channels }))
    }
}
