//! Herald's outgoing HTTP clients (proxy hooks, webhooks): reqwest over rustls with the
//! ring provider given explicitly, so that they work whatever the process installed, and
//! trusting the system's root certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR` are
//! honoured, as OpenSSL does).

use std::sync::{Arc, OnceLock};

/// A reqwest builder for `http://` and `https://` calls.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(tls_config().clone())
}

/// The client TLS configuration, built once: loading the system's roots reads files.
fn tls_config() -> &'static rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "a system root certificate could not be read");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "root certificates for outgoing HTTPS");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    })
}

/// Installs ring as the process's default rustls provider (once; later calls do
/// nothing). Herald's own clients do not need it; a program that embeds Herald and builds
/// reqwest clients of its own (the tests do) calls it first, since this build of reqwest
/// brings no provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `url` as logs may show it: without user info and query string, which may carry
/// credentials.
pub fn loggable_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(unparsable URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_in_logs_lose_credentials_and_queries() {
        assert_eq!(
            super::loggable_url("https://user:pw@keys.example.com/jwks?token=s3cret"),
            "https://keys.example.com/jwks"
        );
        assert_eq!(super::loggable_url("not a url"), "(unparsable URL)");
    }
}
