//! `herald serve` as operators run it, as a process: its log written to a file carries no terminal colour codes,
//! and a TLS config in Centrifugo v6's shape (`http_server.tls.cert_pem` and `key_pem` as file paths, inline PEM
//! or base64 of the PEM) starts a server that answers over TLS, while an unusable one stops the start with an
//! error that names the key; `herald genconfig` writes a private config with fresh secrets that serves and
//! signs tokens, and never overwrites a file.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Herald, default_config, free_port, herald_bin, run_with_timeout};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

/// How long a started server may take to answer `GET /health` over TLS.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a start with an unusable TLS config may take to fail.
const FAIL_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn log_written_to_a_file_has_no_terminal_colour_codes() {
    let mut config = default_config();
    config["log"] = json!({"level": "debug"});
    let herald = Herald::start(config);
    // Some traffic, so that the log has more than the start lines.
    assert_eq!(
        common::http_get_status(herald.port, "/health").unwrap(),
        200
    );
    let log = wait_for_log(&herald.log_path, |log| log.contains("INFO"));
    assert!(
        !log.contains("\x1b["),
        "the log is a file, not a terminal, yet it carries ANSI escape codes:\n{}",
        log.escape_debug()
    );
}

#[test]
fn genconfig_writes_a_private_config_with_fresh_secrets_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = common::make_temp_dir();
    let (a, b) = (dir.join("a.json"), dir.join("b.json"));
    for path in [&a, &b] {
        let out = run_with_timeout(
            {
                let mut c = Command::new(herald_bin());
                c.arg("genconfig").arg("--config").arg(path);
                c
            },
            FAIL_TIMEOUT,
        );
        assert!(
            out.status.is_some_and(|s| s.success()),
            "genconfig: {}",
            out.stderr
        );
    }
    let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds the keys");
    let read =
        |p: &Path| -> Value { serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap() };
    let (ca, cb) = (read(&a), read(&b));
    for key in [
        "/client/token/hmac_secret_key",
        "/http_api/key",
        "/admin/password",
        "/admin/secret",
    ] {
        let (va, vb) = (ca.pointer(key), cb.pointer(key));
        assert!(
            va.and_then(Value::as_str).is_some_and(|s| s.len() >= 32),
            "{key}: {ca}"
        );
        assert_ne!(va, vb, "{key}: every config gets its own secret");
    }
    // Never overwrites.
    let before = fs::read_to_string(&a).unwrap();
    let out = run_with_timeout(
        {
            let mut c = Command::new(herald_bin());
            c.arg("genconfig").arg("--config").arg(&a);
            c
        },
        FAIL_TIMEOUT,
    );
    assert!(
        !out.status.is_some_and(|s| s.success()),
        "an existing file must not be replaced"
    );
    assert!(out.stderr.contains("exists"), "{}", out.stderr);
    assert_eq!(fs::read_to_string(&a).unwrap(), before);
    // It serves, and gentoken signs with it.
    let out = run_with_timeout(
        {
            let mut c = Command::new(herald_bin());
            c.arg("gentoken")
                .arg("--user")
                .arg("u")
                .arg("--config")
                .arg(&a);
            c
        },
        FAIL_TIMEOUT,
    );
    assert!(
        out.status.is_some_and(|s| s.success()) && out.stdout.trim().split('.').count() == 3,
        "{}",
        out.stderr
    );
    let port = free_port();
    let mut child = Command::new(herald_bin())
        .args(["serve", "--config"])
        .arg(&a)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut status = None;
    while status.is_none() && Instant::now() < deadline {
        status = common::http_get_status(port, "/health").ok();
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(status, Some(200));
}

/// The log file's text once `ready` holds for it (or after a few seconds, as it is then).
fn wait_for_log(path: &Path, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = fs::read_to_string(path).unwrap_or_default();
        if ready(&log) || Instant::now() >= deadline {
            assert!(ready(&log), "the log never showed an INFO line:\n{log}");
            return log;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A self-signed certificate for localhost and 127.0.0.1, its key, and the directory holding both as PEM files.
struct Certificate {
    dir: tempdir::Dir,
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Certificate {
    fn generate() -> Certificate {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("rcgen certificate");
        let dir = tempdir::Dir::new("herald-serve-tls");
        let cert_pem = certified.cert.pem();
        let key_pem = certified.signing_key.serialize_pem();
        fs::write(dir.path.join("cert.pem"), &cert_pem).unwrap();
        fs::write(dir.path.join("key.pem"), &key_pem).unwrap();
        Certificate {
            dir,
            cert_pem,
            key_pem,
            der: certified.cert.der().clone(),
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path.join(name).to_string_lossy().into_owned()
    }
}

/// A Herald process serving TLS; killed on drop.
struct TlsHerald {
    child: Child,
    port: u16,
    log_path: std::path::PathBuf,
}

impl Drop for TlsHerald {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- herald log ---\n{}",
                fs::read_to_string(&self.log_path).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the default config with `tls` as `http_server.tls` and a free port into `dir`; returns its path and the
/// port.
fn write_config(dir: &Path, name: &str, tls: &Value) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let mut config = default_config();
    config["http_server"] = json!({"address": "127.0.0.1", "port": port, "tls": tls});
    let path = dir.join(format!("{name}.json"));
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    (path, port)
}

/// Starts `herald serve` with `tls` and waits until `GET /health` over TLS answers 200.
fn start_tls(cert: &Certificate, name: &str, tls: Value) -> TlsHerald {
    let (config_path, port) = write_config(&cert.dir.path, name, &tls);
    let log_path = cert.dir.path.join(format!("{name}.log"));
    let log = fs::File::create(&log_path).unwrap();
    let child = Command::new(herald_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn herald serve");
    let mut herald = TlsHerald {
        child,
        port,
        log_path,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = herald.child.try_wait() {
            panic!(
                "{name}: herald serve exited at start ({status}):\n{}",
                fs::read_to_string(&herald.log_path).unwrap_or_default()
            );
        }
        let last = match https_get(port, &cert.der, "/health") {
            Ok(response) if response.starts_with("HTTP/1.1 200") => return herald,
            Ok(response) => response,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{name}: no 200 from GET /health over TLS within {START_TIMEOUT:?}; last: {last}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` over TLS (HTTP/1.1 by ALPN) on 127.0.0.1:port, trusting only `root`; the response text.
fn https_get(port: u16, root: &CertificateDer<'static>, path: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let sock =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("TLS handshake or write: {e}"))?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            // A peer that closes without close_notify after the whole response: keep what came.
            Err(_) if !response.is_empty() => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

#[test]
fn centrifugo_shaped_tls_config_serves_tls_with_cert_pem_as_a_path_inline_or_base64() {
    let cert = Certificate::generate();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cases = [
        (
            "paths",
            json!({"enabled": true, "cert_pem": cert.file("cert.pem"), "key_pem": cert.file("key.pem")}),
        ),
        (
            "inline",
            json!({"enabled": true, "cert_pem": cert.cert_pem, "key_pem": cert.key_pem}),
        ),
        (
            "base64",
            json!({"enabled": true, "cert_pem": b64(&cert.cert_pem), "key_pem": b64(&cert.key_pem)}),
        ),
        (
            "herald-aliases",
            json!({"cert_pem_file": cert.file("cert.pem"), "key_pem_b64": b64(&cert.key_pem)}),
        ),
    ];
    for (name, tls) in cases {
        let herald = start_tls(&cert, name, tls);
        let response = https_get(herald.port, &cert.der, "/health").unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{name}: {response}");
    }
}

#[test]
fn unusable_tls_config_stops_the_start_naming_the_key() {
    let cert = Certificate::generate();
    let missing = cert.file("no-such-cert.pem");
    let cases = [
        (
            "missing-file",
            json!({"enabled": true, "cert_pem": missing, "key_pem": cert.file("key.pem")}),
            format!(
                "http_server.tls.cert_pem: {missing:?} is not PEM text, base64 of PEM, or the path of an existing file"
            ),
        ),
        (
            "key-is-a-certificate",
            json!({"enabled": true, "cert_pem": cert.file("cert.pem"), "key_pem": cert.file("cert.pem")}),
            "http_server.tls.key_pem: the file".to_owned(),
        ),
        (
            "no-key",
            json!({"enabled": true, "cert_pem": cert.cert_pem}),
            "http_server.tls.key_pem: TLS is on but no private key is set".to_owned(),
        ),
    ];
    for (name, tls, expected) in cases {
        let (config_path, _) = write_config(&cert.dir.path, name, &tls);
        let mut cmd = Command::new(herald_bin());
        cmd.arg("serve").arg("--config").arg(&config_path);
        let out = run_with_timeout(cmd, FAIL_TIMEOUT);
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "{name}: herald serve must refuse to start ({:?}); stdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.contains(&expected),
            "{name}: expected {expected:?} in:\n{}",
            out.stderr
        );
    }
}

/// A temporary directory removed on drop.
mod tempdir {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create temp dir");
            Dir { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
