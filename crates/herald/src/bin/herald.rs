//! The `herald` command: serve, genconfig, gentoken, checkconfig, version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::Config;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a real-time push server (Centrifugo client protocol)"
)]
struct Cli {
    /// Log level: error, warn, info, debug, trace (or a tracing filter). Overrides log.level.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Configuration file (.json, .yaml, .yml or .toml).
        #[arg(long, short, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides http_server.address).
        #[arg(long)]
        address: Option<String>,
        /// Port to listen on (overrides http_server.port).
        #[arg(long)]
        port: Option<u16>,
        /// Serve the chat demo at / (demo.enabled); adds a `chat` namespace for it when the
        /// config has none. For trying Herald out: anyone can get a token for any nickname.
        #[arg(long)]
        demo: bool,
    },
    /// Write a new configuration file with random secrets (token HMAC key, API key, console
    /// password and secret), as Centrifugo's genconfig does. Never overwrites a file.
    Genconfig {
        /// File to write (JSON).
        #[arg(long, short, default_value = "config.json")]
        config: PathBuf,
    },
    /// Print a connection JWT (HS256, signed with client.token.hmac_secret_key) for development.
    Gentoken {
        /// User id (the `sub` claim).
        #[arg(long, short, default_value = "")]
        user: String,
        /// Lifetime in seconds; 0 means no expiry.
        #[arg(long, default_value_t = 3600 * 24 * 7)]
        ttl: u64,
        /// Channels to subscribe the connection to on the server side.
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Configuration file.
        #[arg(long, short, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file, print warnings and the effective configuration.
    Checkconfig {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

/// Logs go to standard output, in colour only when it is a terminal: a file, a pipe or
/// journald gets plain text, with no ANSI escape codes. `NO_COLOR` (any non-empty value)
/// turns colour off on a terminal too.
fn init_logging(level: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal() && !no_color)
        .init();
}

fn load(config: Option<&std::path::Path>) -> Result<(Config, Vec<String>), String> {
    // The error names the file, variable or key already.
    Config::load(config).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Version => {
            println!("herald {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Genconfig { config } => genconfig(&config),
        Command::Checkconfig { config } => {
            let (cfg, warnings) = load(Some(&config))?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?
            );
            eprintln!("configuration {} is valid", config.display());
            Ok(())
        }
        Command::Gentoken {
            user,
            ttl,
            channels,
            config,
        } => {
            let (cfg, _) = load(config.as_deref())?;
            let secret = &cfg.client.token.hmac_secret_key;
            if secret.is_empty() {
                return Err("client.token.hmac_secret_key is not set: gentoken needs a config with an HMAC secret".into());
            }
            let ttl = (ttl > 0).then(|| std::time::Duration::from_secs(ttl));
            println!(
                "{}",
                herald::auth::make_hs256_token(secret, &user, ttl, &channels)
            );
            Ok(())
        }
        Command::Serve {
            config,
            address,
            port,
            demo,
        } => {
            let (mut cfg, warnings) = load(config.as_deref())?;
            let level = cli
                .log_level
                .clone()
                .unwrap_or_else(|| match cfg.log.level.as_str() {
                    "none" => "off".to_string(),
                    other => other.to_string(),
                });
            init_logging(&level);
            for w in &warnings {
                tracing::warn!("{w}");
            }
            if let Some(a) = address {
                cfg.http_server.address = a;
            }
            if let Some(p) = port {
                cfg.http_server.port = p;
            }
            if demo {
                cfg.demo.enabled = true;
            }
            if cfg.demo.enabled && herald::web::add_demo_namespace(&mut cfg) {
                tracing::info!(
                    "demo: added the `chat` namespace (history, recovery, presence, join/leave, publish for subscribers)"
                );
            }
            if cfg.client.token.hmac_secret_key.is_empty()
                && cfg.client.token.rsa_public_key.is_empty()
                && cfg.client.token.ecdsa_public_key.is_empty()
                && !cfg.client.insecure
            {
                let secret = herald::auth::generate_secret();
                tracing::warn!(
                    "no client.token key configured: generated a development HMAC secret for this run: {secret}"
                );
                cfg.client.token.hmac_secret_key = secret;
            }
            raise_fd_limit();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            runtime.block_on(serve(cfg))
        }
    }
}

/// Writes a minimal config with fresh secrets to `path` (created, never overwritten),
/// readable by its owner only: it holds the keys.
fn genconfig(path: &std::path::Path) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let secret = herald::auth::generate_secret;
    let config = serde_json::json!({
        "client": {
            "token": {"hmac_secret_key": secret()},
            "allowed_origins": [],
        },
        "admin": {"enabled": false, "password": secret(), "secret": secret()},
        "http_api": {"key": secret()},
    });
    let mut text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {} (new secrets; keep it private)", path.display());
    Ok(())
}

fn raise_fd_limit() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => {
            let raised = rlimit::Resource::NOFILE.set(hard, hard).is_ok();
            tracing::info!(soft, hard, raised, "open file limit (soft raised to hard)");
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the open file limit"),
    }
}

async fn serve(cfg: Config) -> Result<(), String> {
    let node = herald::node::Node::new(cfg).map_err(|e| e.to_string())?;
    let server = herald::server::Server::bind(node.clone())
        .await
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    let scheme = if server.is_tls() { "s" } else { "" };
    tracing::info!(
        %addr,
        version = env!("CARGO_PKG_VERSION"),
        "herald listening: WebSocket at ws{scheme}://{addr}/connection/websocket, SSE at http{scheme}://{addr}/connection/uni_sse, API at http{scheme}://{addr}/api"
    );
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        match addr {
            std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
            std::net::SocketAddr::V4(a) => a.ip().to_string(),
        }
    };
    let page = format!("http{scheme}://{host}:{}", addr.port());
    if node.config.demo.enabled {
        println!("Herald chat demo: open {page}/");
    }
    if node.config.admin.enabled {
        println!("Herald console: {page}/console");
    }
    server.run(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
