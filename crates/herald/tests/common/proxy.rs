//! Real load balancers in front of test nodes: nginx, HAProxy and Caddy (Debian packages), each run from the
//! recipe shipped in examples/proxies/ with only its addresses, ports and certificate paths replaced, so that
//! the tests prove the very file users copy. TLS is terminated by the proxy with a certificate the test makes.
//!
//! Every proxy listens on a free port of 127.0.0.1 (and Caddy's admin API and HTTP port on free ports too), runs
//! in the foreground as a child of the test, and is stopped (SIGTERM, then SIGKILL) when the handle drops.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, make_temp_dir, repo_root};

/// How long a proxy may take to answer `GET /health` (passed on to a node) through TLS.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The recipes' placeholder node addresses, replaced by the test nodes' in order.
const NODE_PLACEHOLDERS: [&str; 3] = ["10.0.0.11:8000", "10.0.0.12:8000", "10.0.0.13:8000"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Nginx,
    Haproxy,
    Caddy,
}

impl ProxyKind {
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
            ProxyKind::Caddy => "caddy",
        }
    }

    /// The recipe file under examples/proxies/.
    pub fn recipe(self) -> PathBuf {
        let file = match self {
            ProxyKind::Nginx => "nginx.conf",
            ProxyKind::Haproxy => "haproxy.cfg",
            ProxyKind::Caddy => "Caddyfile",
        };
        repo_root().join("examples/proxies").join(file)
    }
}

/// A running proxy. `port` serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) for `localhost`.
pub struct Proxy {
    pub kind: ProxyKind,
    pub port: u16,
    /// The certificate clients must trust (self-signed, for `localhost` and 127.0.0.1).
    pub ca_file: PathBuf,
    dir: PathBuf,
    log_path: PathBuf,
    child: Child,
}

impl Proxy {
    /// Starts `kind` from its recipe in front of `nodes` (the ports of exactly three nodes on 127.0.0.1), with
    /// TLS from `cert_file` / `key_file`. Panics, with the proxy's log, when it does not pass a request on to a
    /// node in time.
    pub fn start(kind: ProxyKind, nodes: &[u16], cert_file: &Path, key_file: &Path) -> Proxy {
        assert_eq!(
            nodes.len(),
            NODE_PLACEHOLDERS.len(),
            "the recipes name three nodes"
        );
        let dir = make_temp_dir();
        let port = free_port();
        let recipe = fs::read_to_string(kind.recipe())
            .unwrap_or_else(|e| panic!("read {}: {e}", kind.recipe().display()));
        let mut text = recipe.clone();
        for (placeholder, port) in NODE_PLACEHOLDERS.iter().zip(nodes) {
            text = text.replace(placeholder, &format!("127.0.0.1:{port}"));
        }
        let cert = cert_file.display().to_string();
        let key = key_file.display().to_string();
        let log_path = dir.join("proxy.log");
        let mut cmd = match kind {
            ProxyKind::Nginx => {
                text = replace_once(
                    &text,
                    "listen 443 ssl http2;",
                    &format!("listen 127.0.0.1:{port} ssl http2;"),
                );
                text = replace_once(&text, "/etc/ssl/herald/fullchain.pem", &cert);
                text = replace_once(&text, "/etc/ssl/herald/privkey.pem", &key);
                let snippet = dir.join("herald.conf");
                fs::write(&snippet, &text).expect("write nginx snippet");
                // What Debian's /etc/nginx/nginx.conf provides around conf.d/*.conf, in a directory of our own.
                let tmp = dir.join("tmp");
                fs::create_dir_all(&tmp).expect("nginx temp dir");
                let d = dir.display();
                let user = if is_root() { "user root;" } else { "" };
                let main = format!(
                    "{user} worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log notice;\n\
                     events {{ worker_connections 16384; }}\n\
                     http {{ access_log off; client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
                     fastcgi_temp_path {d}/tmp/fastcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
                     include {}; }}\n",
                    snippet.display()
                );
                let main_path = dir.join("nginx.conf");
                fs::write(&main_path, main).expect("write nginx.conf");
                let mut cmd = Command::new(find("nginx"));
                cmd.arg("-c")
                    .arg(&main_path)
                    .arg("-p")
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"));
                cmd
            }
            ProxyKind::Haproxy => {
                let combined = dir.join("herald.pem");
                let pem = format!(
                    "{}{}",
                    fs::read_to_string(cert_file).expect("read cert"),
                    fs::read_to_string(key_file).expect("read key")
                );
                fs::write(&combined, pem).expect("write combined pem");
                text = replace_once(&text, "bind :443 ", &format!("bind 127.0.0.1:{port} "));
                text = replace_once(
                    &text,
                    "/etc/ssl/herald/herald.pem",
                    &combined.display().to_string(),
                );
                let cfg = dir.join("haproxy.cfg");
                fs::write(&cfg, &text).expect("write haproxy.cfg");
                let mut cmd = Command::new(find("haproxy"));
                cmd.arg("-f").arg(&cfg).arg("-db");
                cmd
            }
            ProxyKind::Caddy => {
                let admin = free_port();
                let http = free_port();
                text = replace_once(
                    &text,
                    "admin localhost:2019",
                    &format!(
                        "admin 127.0.0.1:{admin}\n    http_port {http}\n    https_port {port}"
                    ),
                );
                text = replace_once(
                    &text,
                    "\nherald.example.com {",
                    &format!("\nlocalhost:{port} {{"),
                );
                text = replace_once(&text, "/etc/ssl/herald/fullchain.pem", &cert);
                text = replace_once(&text, "/etc/ssl/herald/privkey.pem", &key);
                let cfg = dir.join("Caddyfile");
                fs::write(&cfg, &text).expect("write Caddyfile");
                let mut cmd = Command::new(find("caddy"));
                cmd.arg("run")
                    .arg("--config")
                    .arg(&cfg)
                    .arg("--adapter")
                    .arg("caddyfile");
                cmd.env("XDG_DATA_HOME", &dir)
                    .env("XDG_CONFIG_HOME", &dir)
                    .env("HOME", &dir);
                cmd
            }
        };
        let log = fs::File::create(&log_path).expect("proxy log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log clone")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", kind.name()));
        let mut proxy = Proxy {
            kind,
            port,
            ca_file: cert_file.to_path_buf(),
            dir,
            log_path,
            child,
        };
        proxy.wait_ready();
        proxy
    }

    /// `https://localhost:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The proxy's own log (nginx's error log included).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = fs::read_to_string(&self.log_path).unwrap_or_default();
        text.push_str(&fs::read_to_string(self.dir.join("error.log")).unwrap_or_default());
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `curl` with the proxy's certificate trusted.
    pub fn curl(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.arg("-s").arg("--cacert").arg(&self.ca_file);
        cmd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited at start ({status}); log:\n{}",
                    self.kind.name(),
                    self.log_tail(40)
                );
            }
            let out = self
                .curl()
                .args(["-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"])
                .arg(format!("{}/health", self.base_url()))
                .output();
            if out.is_ok_and(|o| o.stdout == b"200") {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not pass GET /health on to a node within {READY_TIMEOUT:?}; log:\n{}",
                    self.kind.name(),
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- {} log ---\n{}\n--- end ---",
                self.kind.name(),
                self.log_tail(60)
            );
        }
        // SIGTERM first: nginx's master takes its workers down with it (SIGKILL would orphan them).
        super::terminate(&mut self.child, Duration::from_secs(5));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the recipe no longer contains {from:?}; update tests/common/proxy.rs"
    );
    text.replacen(from, to, 1)
}

/// The proxy's binary: on PATH or in /usr/sbin (nginx and haproxy live there and /usr/sbin is not always on
/// a non-root PATH).
fn find(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is not installed: .ci/run installs it (apt-get install nginx-light haproxy caddy)"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
