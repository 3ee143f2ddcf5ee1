//! A real `redis-server` for the tests: started on a free loopback port with no
//! persistence (`--save "" --appendonly no`), so a restart loses everything, as a Redis
//! without persistence does in production. Killed when the handle drops.
//!
//! `REDIS_SERVER_BIN` overrides the binary (default: `redis-server` from `PATH`, Debian's
//! package, which `.ci/run` installs). Plain std only: commands are sent as RESP over a
//! `TcpStream`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a started redis-server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running redis-server.
pub struct RedisServer {
    /// Its TCP port on 127.0.0.1 (plain; the tests' own commands use it).
    pub port: u16,
    /// Its TLS port, when started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    /// Arguments beyond the defaults, kept for a restart.
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free port of 127.0.0.1 and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last = String::new();
        for _ in 0..3 {
            let port = super::free_port();
            match Self::spawn(port, &extra) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        tls_port: None,
                        extra,
                        child: Some(child),
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Like [`RedisServer::start`], with a TLS port as well, serving `ca`'s server
    /// certificate; with `client_auth` a client must present a certificate `ca` signed
    /// (Redis's default, `tls-auth-clients yes`). The plain port stays for the test's own
    /// commands.
    pub fn start_tls(ca: &TestCa, client_auth: bool) -> RedisServer {
        let tls_port = super::free_port();
        let file = |name: &str| ca.dir.join(name).to_string_lossy().to_string();
        let mut server = Self::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            if client_auth { "yes" } else { "no" },
        ]);
        server.tls_port = Some(tls_port);
        server
    }

    /// `rediss://127.0.0.1:TLS_PORT` (after [`RedisServer::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}",
            self.tls_port.expect("started with start_tls")
        )
    }

    fn spawn(port: u16, extra: &[String]) -> Result<Child, String> {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        // In the temp dir: whatever Redis might write (an RDB on some commands) never lands
        // in the repository.
        let mut child = Command::new(&bin)
            .current_dir(std::env::temp_dir())
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {bin}: {e} (install Debian's redis-server)"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "redis-server exited ({status}) on port {port}: {err}"
                ));
            }
            if let Ok(reply) = command(port, &["PING"])
                && reply == "+PONG"
            {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no PONG on port {port} within {READY_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command; returns the first line of the reply (`+OK`, `:1`, `$5`, ...).
    /// Panics when Redis does not answer.
    pub fn cmd(&self, args: &[&str]) -> String {
        command(self.port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Drops every key (the data loss of a Redis restarted without persistence).
    pub fn flushall(&self) {
        assert_eq!(self.cmd(&["FLUSHALL"]), "+OK");
    }

    /// Kills the server (SIGKILL): connections drop, data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty server on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match Self::spawn(self.port, &self.extra) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                // The port may linger for a moment after the kill.
                Err(e) if Instant::now() >= deadline => panic!("redis-server restart: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One RESP command on a new connection; the first line of the reply.
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    stream.write_all(&out)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("connection closed without a reply"));
    }
    Ok(line.trim_end().to_string())
}

/// A Redis Cluster of three masters (no replicas) on loopback ports, made with
/// `redis-cli --cluster create` (Debian's redis-tools, installed with redis-server); its
/// nodes keep their cluster state in a temporary directory, removed with the handle.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts three cluster nodes and joins them; waits until the cluster is ok.
    pub fn start() -> RedisCluster {
        Self::start_inner(None)
    }

    /// Like [`RedisCluster::start`], with TLS for clients and for the cluster bus
    /// (`tls-cluster yes`), so that the cluster names its nodes' TLS ports to TLS
    /// clients; `ca` signs the certificates. The plain ports stay for the test's commands.
    pub fn start_tls(ca: &TestCa) -> RedisCluster {
        Self::start_inner(Some(ca))
    }

    fn start_inner(tls: Option<&TestCa>) -> RedisCluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-redis-cluster-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let dir_arg = dir.to_string_lossy().to_string();
        let mut nodes = Vec::new();
        let mut n = 0;
        while nodes.len() < 3 {
            n += 1;
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{n}.conf"),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                &dir_arg,
            ]
            .map(String::from)
            .to_vec();
            let tls_port = tls.map(|ca| {
                let port = super::free_port();
                args.extend(tls_args(ca, port, "--tls-cluster"));
                port
            });
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut node = RedisServer::start_with(&args);
            node.tls_port = tls_port;
            // The cluster bus listens on port + 10000 (the TLS port's, with TLS).
            if node.port.max(tls_port.unwrap_or(0)) <= 55000 {
                nodes.push(node);
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.tls_port.unwrap_or(n.port)))
            .collect();
        let mut cli = Command::new("redis-cli");
        if let Some(ca) = tls {
            cli.args(["--tls", "--cacert", &ca.path("ca.pem")]);
        }
        let out = cli
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| cluster_ok(n.port)) {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes, dir }
    }

    /// `redis://` of the first node, with the others as `addr=` seeds (`rediss://` and
    /// the TLS ports after [`RedisCluster::start_tls`]).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("addr=127.0.0.1:{}", n.tls_port.unwrap_or(n.port)))
            .collect();
        let first = match self.nodes[0].tls_port {
            Some(_) => self.nodes[0].tls_url(),
            None => self.nodes[0].url(),
        };
        format!("{first}?{}", seeds.join("&"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the node on `port` says `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).contains("cluster_state:ok")
}

/// A Redis master with one replica, watched by one Sentinel (quorum 1, master named
/// `herald`, declared down after 1 s without an answer), on loopback ports.
pub struct RedisSentinel {
    /// The master at start.
    pub master: RedisServer,
    /// Its replica, promoted by the Sentinel when the master dies.
    pub replica: RedisServer,
    /// The Sentinel's port.
    pub port: u16,
    /// The Sentinel's TLS port, after [`RedisSentinel::start_tls`].
    pub tls_port: Option<u16>,
    child: Child,
    dir: std::path::PathBuf,
}

/// `redis-server` arguments for a TLS port serving `ca`'s server certificate, no client
/// certificates asked, and TLS on the links that `links` names (`--tls-replication` for a
/// replica's and a Sentinel's, `--tls-cluster` for the cluster bus).
fn tls_args(ca: &TestCa, port: u16, links: &str) -> Vec<String> {
    [
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &ca.path("server.pem"),
        "--tls-key-file",
        &ca.path("server.key"),
        "--tls-ca-cert-file",
        &ca.path("ca.pem"),
        "--tls-auth-clients",
        "no",
        links,
        "yes",
    ]
    .map(String::from)
    .to_vec()
}

impl RedisSentinel {
    /// Starts the three and waits until the Sentinel knows the replica.
    pub fn start() -> RedisSentinel {
        Self::start_inner(None)
    }

    /// Like [`RedisSentinel::start`], with TLS everywhere (`ca` signs the certificates):
    /// the Sentinel has a TLS port, watches the master through its TLS port and so names
    /// TLS ports to its clients, and the replica replicates over TLS. Plain ports stay
    /// for the test's commands; `port` stays the Sentinel's plain one.
    pub fn start_tls(ca: &TestCa) -> RedisSentinel {
        Self::start_inner(Some(ca))
    }

    fn start_inner(tls: Option<&TestCa>) -> RedisSentinel {
        let with_tls = |mut args: Vec<String>| {
            let port = tls.map(|ca| {
                let port = super::free_port();
                args.extend(tls_args(ca, port, "--tls-replication"));
                port
            });
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut server = RedisServer::start_with(&args);
            server.tls_port = port;
            server
        };
        // No delay before the first sync (5 s by default).
        let master = with_tls(vec!["--repl-diskless-sync-delay".into(), "0".into()]);
        let master_port = master.tls_port.unwrap_or(master.port);
        let replica = with_tls(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master_port.to_string(),
        ]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new("redis-cli")
            .args(["-p", &replica.port.to_string(), "INFO", "replication"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("master_link_status:up"))
        {
            assert!(Instant::now() < deadline, "the replica did not sync");
            thread::sleep(Duration::from_millis(50));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-redis-sentinel-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let port = super::free_port();
        let conf = dir.join("sentinel.conf");
        let tls_port = tls.map(|_| super::free_port());
        let tls_conf = match (tls, tls_port) {
            (Some(ca), Some(p)) => tls_args(ca, p, "--tls-replication")
                .chunks(2)
                .map(|kv| format!("{} {}\n", kv[0].trim_start_matches("--"), kv[1]))
                .collect(),
            _ => String::new(),
        };
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n{tls_conf}\
                 sentinel monitor herald 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds herald 1000\n\
                 sentinel failover-timeout herald 5000\n",
                dir.display(),
            ),
        )
        .expect("sentinel.conf");
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
        let sentinel = RedisSentinel {
            master,
            replica,
            port,
            tls_port,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "SENTINEL", "replicas", "herald"])
                .stdin(Stdio::null())
                .output();
            if out.is_ok_and(|o| {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                // A replica over TLS announces its TLS port.
                let replica = &sentinel.replica;
                text.contains(&replica.tls_port.unwrap_or(replica.port).to_string())
                    && !text.contains("s_down")
            }) {
                return sentinel;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel did not find the replica"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+sentinel://127.0.0.1:PORT?sentinel_master_name=herald`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}?sentinel_master_name=herald",
            self.port
        )
    }

    /// `rediss+sentinel://127.0.0.1:TLS_PORT?sentinel_master_name=herald` (after
    /// [`RedisSentinel::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!(
            "rediss+sentinel://127.0.0.1:{}?sentinel_master_name=herald",
            self.tls_port.expect("started with start_tls")
        )
    }

    /// The port the Sentinel names as master now.
    pub fn master_port(&self) -> Option<u16> {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.port.to_string(),
                "SENTINEL",
                "get-master-addr-by-name",
                "herald",
            ])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate authority made for one test, with a server certificate for 127.0.0.1
/// and `localhost` and a client certificate, all signed by it; PEM files in a temporary
/// directory (removed with the handle): `ca.pem`, `server.pem`, `server.key`,
/// `client.pem`, `client.key`.
pub struct TestCa {
    /// Where the files are.
    pub dir: std::path::PathBuf,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The client certificate and its key (PEM).
    pub client_pem: String,
    pub client_key: String,
}

impl TestCa {
    /// A new CA (a different one each call: a test's "wrong CA" is another `TestCa`).
    pub fn new() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("herald-redis-tls-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tls dir");

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("Herald test CA {nanos}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &issuer).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) = leaf(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            "redis",
        );
        let (client_pem, client_key) = leaf(vec!["herald".to_owned()], "herald");
        let ca_pem = ca_cert.pem();
        for (name, pem) in [
            ("ca.pem", &ca_pem),
            ("server.pem", &server_pem),
            ("server.key", &server_key),
            ("client.pem", &client_pem),
            ("client.key", &client_key),
        ] {
            std::fs::write(dir.join(name), pem).expect("write PEM");
        }
        TestCa {
            dir,
            ca_pem,
            client_pem,
            client_key,
        }
    }

    /// The path of one of its files.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().to_string()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
