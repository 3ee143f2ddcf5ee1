//! Hook calls over gRPC: unary calls to the backend's `CentrifugoProxy` service
//! (`proto/proxy.proto`, Centrifugo's service and message shapes), with the forwarded
//! headers as call metadata.

use bytes::Bytes;
use http::HeaderMap;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use super::ProxyError;
use super::wire::{self, Call, Granted, Hook, Outcome, Overrides};
use crate::config::ProxyEndpointConfig;
use crate::error::{ClientError, Disconnect};

/// The proxy protocol's messages, service client and server.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/centrifugal.centrifugo.proxy.rs"));
}

use proto::centrifugo_proxy_client::CentrifugoProxyClient;

/// A gRPC proxy's client: one lazily connected channel (HTTP/2, multiplexed), which
/// reconnects by itself.
pub(super) struct GrpcProxy {
    client: CentrifugoProxyClient<Channel>,
}

impl GrpcProxy {
    pub(super) fn new(config: &ProxyEndpointConfig) -> Result<GrpcProxy, ProxyError> {
        let address = config
            .endpoint
            .strip_prefix("grpc://")
            .ok_or_else(|| ProxyError::Request(format!("not grpc://: {}", config.endpoint)))?;
        let channel = Channel::from_shared(format!("http://{address}"))
            .map_err(|e| ProxyError::Request(e.to_string()))?
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .connect_lazy();
        Ok(GrpcProxy {
            client: CentrifugoProxyClient::new(channel),
        })
    }

    pub(super) async fn call(
        &self,
        config: &ProxyEndpointConfig,
        call: &Call<'_>,
        headers: HeaderMap,
    ) -> Result<Outcome, ProxyError> {
        let mut metadata = MetadataMap::from_headers(headers);
        if !config.grpc.credentials_key.is_empty()
            && let (Ok(k), Ok(v)) = (
                config
                    .grpc
                    .credentials_key
                    .to_ascii_lowercase()
                    .parse::<tonic::metadata::MetadataKey<_>>(),
                config.grpc.credentials_value.parse(),
            )
        {
            metadata.insert(k, v);
        }
        let c = call.conn;
        let (client, transport, protocol, encoding) = (
            c.client.to_string(),
            c.transport.to_string(),
            wire::protocol_name(c.encoding).to_string(),
            wire::encoding_name(c.encoding).to_string(),
        );
        let user = c.user.to_string();
        let meta = if config.include_connection_meta {
            c.meta.clone()
        } else {
            Bytes::new()
        };
        let data = call.data.clone();
        let mut grpc = self.client.clone();
        macro_rules! answer {
            ($response:expr, |$r:ident| $granted:expr) => {{
                let response = $response.await.map_err(status)?.into_inner();
                if let Some(d) = response.disconnect {
                    return Ok(Outcome::Disconnect(Disconnect {
                        code: d.code,
                        reason: d.reason.into(),
                    }));
                }
                if let Some(e) = response.error {
                    return Ok(Outcome::Refuse(ClientError {
                        code: e.code,
                        message: e.message.into(),
                        temporary: e.temporary,
                    }));
                }
                let $r = response.result.ok_or_else(|| {
                    ProxyError::Malformed("no result, error or disconnect".into())
                })?;
                Ok(Outcome::Accept($granted))
            }};
        }
        match call.hook {
            Hook::Connect => answer!(
                grpc.connect(with_metadata(
                    &metadata,
                    proto::ConnectRequest {
                        client,
                        transport,
                        protocol,
                        encoding,
                        data,
                        b64data: String::new(),
                        name: call.name.to_string(),
                        version: call.version.to_string(),
                        channels: Vec::new(),
                    }
                )),
                |r| Granted {
                    user: r.user,
                    expire_at: expiry(r.expire_at),
                    info: payload(r.info, &r.b64info, "b64info")?,
                    data: payload(r.data, &r.b64data, "b64data")?,
                    channels: r.channels,
                    meta: (!r.meta.is_empty()).then_some(r.meta),
                    ..Granted::default()
                }
            ),
            Hook::Refresh => answer!(
                grpc.refresh(with_metadata(
                    &metadata,
                    proto::RefreshRequest {
                        client,
                        transport,
                        protocol,
                        encoding,
                        user,
                        meta,
                    }
                )),
                |r| Granted {
                    expired: r.expired,
                    expire_at: expiry(r.expire_at),
                    info: payload(r.info, &r.b64info, "b64info")?,
                    meta: (!r.meta.is_empty()).then_some(r.meta),
                    ..Granted::default()
                }
            ),
            Hook::Subscribe => answer!(
                grpc.subscribe(with_metadata(
                    &metadata,
                    proto::SubscribeRequest {
                        client,
                        transport,
                        protocol,
                        encoding,
                        user,
                        channel: call.channel.to_string(),
                        token: String::new(),
                        meta,
                        data,
                        b64data: String::new(),
                    }
                )),
                |r| Granted {
                    expire_at: expiry(r.expire_at),
                    info: payload(r.info, &r.b64info, "b64info")?,
                    data: payload(r.data, &r.b64data, "b64data")?,
                    overrides: r.r#override.map(overrides).unwrap_or_default(),
                    ..Granted::default()
                }
            ),
            Hook::Publish => answer!(
                grpc.publish(with_metadata(
                    &metadata,
                    proto::PublishRequest {
                        client,
                        transport,
                        protocol,
                        encoding,
                        user,
                        channel: call.channel.to_string(),
                        data,
                        b64data: String::new(),
                        meta,
                    }
                )),
                |r| Granted {
                    data: payload(r.data, &r.b64data, "b64data")?,
                    skip_history: r.skip_history,
                    tags: r.tags,
                    ..Granted::default()
                }
            ),
            Hook::SubRefresh => answer!(
                grpc.sub_refresh(with_metadata(
                    &metadata,
                    proto::SubRefreshRequest {
                        client,
                        transport,
                        protocol,
                        encoding,
                        user,
                        channel: call.channel.to_string(),
                        meta,
                    }
                )),
                |r| Granted {
                    expired: r.expired,
                    expire_at: expiry(r.expire_at),
                    info: payload(r.info, &r.b64info, "b64info")?,
                    ..Granted::default()
                }
            ),
            Hook::Rpc => answer!(
                grpc.rpc(with_metadata(
                    &metadata,
                    proto::RpcRequest {
                        client,
                        transport,
                        protocol,
                        encoding,
                        user,
                        method: call.method.to_string(),
                        data,
                        b64data: String::new(),
                        meta,
                    }
                )),
                |r| Granted {
                    data: payload(r.data, &r.b64data, "b64data")?,
                    ..Granted::default()
                }
            ),
        }
    }
}

fn with_metadata<T>(metadata: &MetadataMap, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    *r.metadata_mut() = metadata.clone();
    r
}

fn status(s: tonic::Status) -> ProxyError {
    ProxyError::Request(format!("gRPC {:?}: {}", s.code(), s.message()))
}

fn expiry(at: i64) -> Option<i64> {
    (at > 0).then_some(at)
}

/// A result payload: `b64*` decoded when set, the bytes field when not empty.
fn payload(bytes: Bytes, b64: &str, field: &str) -> Result<Option<Bytes>, ProxyError> {
    if !b64.is_empty() {
        return wire::decode_b64(b64, field).map(Some);
    }
    Ok((!bytes.is_empty()).then_some(bytes))
}

fn overrides(o: proto::SubscribeOptionOverride) -> Overrides {
    let flag = |v: Option<proto::BoolValue>| v.map(|b| b.value);
    Overrides {
        presence: flag(o.presence),
        join_leave: flag(o.join_leave),
        force_recovery: flag(o.force_recovery),
        force_positioning: flag(o.force_positioning),
        force_push_join_leave: flag(o.force_push_join_leave),
    }
}
