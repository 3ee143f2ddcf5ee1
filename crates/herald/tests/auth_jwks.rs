//! Connection tokens verified with keys from a JWKS endpoint (`client.token.
//! jwks_public_endpoint`), a real HTTP server on loopback: the key a token's `kid` names
//! verifies it; keys are cached; a rotated key is fetched when a token first names it; a
//! flood of unknown `kid`s costs at most one fetch per `jwks_min_refresh_interval` and
//! each such token is invalid (3500); an endpoint that is down, slow or answers garbage
//! gives the temporary error 100, never a hang and never an acceptance.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use base64::Engine as _;
use herald::protocol::Encoding;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Client, TestServer, cmd, now_secs};

/// An ES256 key pair: its JWK (public) and a signer.
struct Key {
    signer: EncodingKey,
    jwk: Value,
}

impl Key {
    fn new(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let raw = pair.public_key_raw(); // 0x04 || X || Y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Key {
            signer: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    fn token(&self, kid: &str, user: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &json!({"sub": user, "exp": now_secs() + 3600}),
            &self.signer,
        )
        .unwrap()
    }
}

/// The JWKS endpoint: what it serves, how, and how often it was asked.
struct Endpoint {
    body: Mutex<String>,
    status: Mutex<u16>,
    delay: Mutex<Duration>,
    fetches: AtomicUsize,
}

async fn jwks(State(e): State<Arc<Endpoint>>) -> (axum::http::StatusCode, String) {
    e.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = *e.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let status = axum::http::StatusCode::from_u16(*e.status.lock().unwrap()).unwrap();
    (status, e.body.lock().unwrap().clone())
}

async fn endpoint(keys: &[&Key]) -> (Arc<Endpoint>, SocketAddr) {
    let e = Arc::new(Endpoint {
        body: Mutex::new(set(keys)),
        status: Mutex::new(200),
        delay: Mutex::new(Duration::ZERO),
        fetches: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/jwks", get(jwks))
        .with_state(e.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (e, addr)
}

fn set(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

async fn herald(addr: SocketAddr) -> TestServer {
    TestServer::start(json!({"client": {"token": {
        "jwks_public_endpoint": format!("http://{addr}/jwks"),
        "jwks_min_refresh_interval": "1s",
        "jwks_timeout": "500ms"
    }}}))
    .await
}

/// Connects with `token`: `Ok(user)`, `Err(error code)` or `Err(close code)`.
async fn connect(server: &TestServer, token: &str) -> Result<(), u32> {
    let mut c = Client::open(server, Encoding::Json, None).await;
    let mut command = cmd::connect(token);
    command.id = c.new_id();
    c.send(command).await;
    match c.next_reply(Duration::from_secs(5)).await {
        Some(r) if r.connect.is_some() => Ok(()),
        Some(r) => Err(r.error.map_or(0, |e| e.code)),
        None => Err(c
            .expect_close(Duration::from_secs(1))
            .await
            .map_or(0, |(code, _)| u32::from(code))),
    }
}

#[tokio::test]
async fn keys_come_from_the_endpoint_cached_and_rotated() {
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let (e, addr) = endpoint(&[&k1]).await;
    let server = herald(addr).await;

    assert_eq!(connect(&server, &k1.token("k1", "alice")).await, Ok(()));
    assert_eq!(connect(&server, &k1.token("k1", "bob")).await, Ok(()));
    assert_eq!(e.fetches.load(Ordering::SeqCst), 1, "cached by kid");

    // A token signed by k1 but naming k2, which the set does not have yet: invalid.
    assert_eq!(connect(&server, &k1.token("k2", "eve")).await, Err(3500));
    // The backend rotates to k2: the first token naming it makes Herald fetch again.
    *e.body.lock().unwrap() = set(&[&k1, &k2]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(connect(&server, &k2.token("k2", "carol")).await, Ok(()));
    // A token signed with k1's key but claiming k2 is not verified by k2.
    assert_eq!(
        connect(&server, &k1.token("k2", "mallory")).await,
        Err(3500)
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_interval() {
    let k1 = Key::new("k1");
    let (e, addr) = endpoint(&[&k1]).await;
    let server = herald(addr).await;
    assert_eq!(connect(&server, &k1.token("k1", "alice")).await, Ok(()));
    let started = Instant::now();
    for i in 0..30 {
        assert_eq!(
            connect(&server, &k1.token(&format!("forged-{i}"), "eve")).await,
            Err(3500)
        );
    }
    let intervals = started.elapsed().as_secs() as usize + 1;
    let fetches = e.fetches.load(Ordering::SeqCst);
    assert!(
        fetches <= 1 + intervals,
        "{fetches} fetches for 30 forged kids in {intervals} interval(s)"
    );
}

#[tokio::test]
async fn an_endpoint_down_slow_or_garbled_gives_error_100_in_time() {
    let k1 = Key::new("k1");
    for (status, body, delay) in [
        (503, "".to_string(), Duration::ZERO),
        (
            200,
            "<html>not a key set</html>".to_string(),
            Duration::ZERO,
        ),
        (200, set(&[&k1]), Duration::from_secs(3)),
    ] {
        let (e, addr) = endpoint(&[]).await;
        *e.status.lock().unwrap() = status;
        *e.body.lock().unwrap() = body;
        *e.delay.lock().unwrap() = delay;
        let server = herald(addr).await;
        let started = Instant::now();
        assert_eq!(
            connect(&server, &k1.token("k1", "alice")).await,
            Err(100),
            "status {status}, delay {delay:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "within the timeout"
        );
    }
}
