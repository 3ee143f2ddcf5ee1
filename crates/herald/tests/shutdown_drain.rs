//! The drain on shutdown (`shutdown.*`): the listener closes at once, and connected clients
//! are told to reconnect (3001) spread over `shutdown.reconnect_spread`, not all at once, so
//! that behind a load balancer they arrive at the other nodes over that window.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use herald::protocol::Encoding;
use serde_json::json;
use support::TestServer;

const CLIENTS: usize = 40;
const SPREAD: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_told_to_reconnect_spread_over_the_window_and_the_listener_closes_at_once() {
    let mut server = TestServer::start(json!({
        "shutdown": {"reconnect_spread": "1500ms", "timeout": "10s"},
        "channel": {"without_namespace": {"allow_subscribe_for_client": true}},
    }))
    .await;
    let addr = server.addr;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (mut c, _) = server.connected(Encoding::Json, &format!("u{i}")).await;
        c.subscribe("news").await;
        clients.push(c);
    }

    server.shutdown();
    let t0 = Instant::now();
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let close = c.expect_close(SPREAD + Duration::from_secs(5)).await;
                (t0.elapsed(), close)
            })
        })
        .collect();

    // The listener is gone at once: a new connection is refused well before the spread ends.
    let mut refused_after = None;
    while t0.elapsed() < SPREAD / 2 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused_after = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refused_after.is_some(),
        "new connections still accepted {:?} after the shutdown began",
        SPREAD / 2
    );

    let mut times = Vec::new();
    for task in closes {
        let (at, close) = task.await.expect("client task");
        let (code, reason) = close.expect("a close frame");
        assert_eq!(
            code, 3001,
            "told to reconnect (shutdown), reason {reason:?}"
        );
        times.push(at);
    }
    times.sort();
    let (first, last) = (times[0], times[CLIENTS - 1]);
    println!("closes from {first:?} to {last:?} (spread {SPREAD:?})");
    assert!(
        first < Duration::from_millis(400),
        "the first clients are told at once: {first:?}"
    );
    assert!(
        last >= SPREAD * 7 / 10 && last < SPREAD + Duration::from_millis(1500),
        "the last client is told near the end of the spread: {last:?}"
    );
    // Evenly: every quarter of the window sees some of them.
    for q in 0..4u32 {
        let (from, to) = (SPREAD * q / 4, SPREAD * (q + 1) / 4);
        let n = times.iter().filter(|t| **t >= from && **t < to).count();
        assert!(
            n >= CLIENTS / 10,
            "only {n} of {CLIENTS} clients told between {from:?} and {to:?}: {times:?}"
        );
    }
}
