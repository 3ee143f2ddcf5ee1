//! Proxy hooks over HTTPS: a Herald process calls a backend that serves TLS on loopback
//! with a certificate the process trusts through `SSL_CERT_FILE` (the system-roots
//! convention Herald's outgoing HTTPS honours). The connect hook is answered; a backend
//! whose certificate is not trusted is a failed call (error 100), never a plain-text
//! fallback.

mod common;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::post;
use common::Herald;
use herald::protocol::Encoding;
use herald::protocol::proto::{Command, ConnectRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use support::Client;

/// An HTTPS backend on loopback answering the connect hook; returns its address and the
/// PEM file of its self-signed certificate.
async fn https_backend() -> (SocketAddr, std::path::PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = common::make_temp_dir();
    let pem = dir.join("backend.pem");
    std::fs::write(&pem, certified.cert.pem()).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = axum::Router::new().route(
        "/connect",
        post(|| async { r#"{"result":{"user":"over-tls","data":{"secure":true}}}"# }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (addr, pem)
}

async fn connect(herald: &Herald) -> herald::protocol::proto::Reply {
    let mut c = Client::open_at(herald.addr(), Encoding::Json, None).await;
    c.call(Command {
        connect: Some(ConnectRequest::default()),
        ..Default::default()
    })
    .await
}

fn config(addr: SocketAddr) -> serde_json::Value {
    json!({"client": {"proxy": {"connect": {
        "enabled": true, "endpoint": format!("https://127.0.0.1:{}/connect", addr.port()),
        "timeout": "2s"}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_hook_over_https_with_a_trusted_and_an_untrusted_certificate() {
    let (addr, pem) = https_backend().await;
    let trusting =
        Herald::start_with_env(config(addr), &[("SSL_CERT_FILE", pem.to_str().unwrap())]);
    let reply = connect(&trusting).await;
    let result = reply
        .connect
        .unwrap_or_else(|| panic!("connected over HTTPS: {:?}", reply.error));
    assert_eq!(support::payload_json(&result.data), json!({"secure": true}));

    // Another certificate store: the backend's certificate is not trusted.
    let (_, other_pem) = https_backend().await;
    let distrusting = Herald::start_with_env(
        config(addr),
        &[("SSL_CERT_FILE", other_pem.to_str().unwrap())],
    );
    let reply = connect(&distrusting).await;
    assert_eq!(
        reply.error.map(|e| e.code),
        Some(100),
        "untrusted: a failed call"
    );
}
