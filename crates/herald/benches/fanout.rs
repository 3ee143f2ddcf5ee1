//! Hub fan-out: one publication to 10,000 local subscribers of one channel.
//!
//! Run with `cargo bench --bench fanout`. Prints, for JSON subscribers, Protobuf subscribers
//! and a 50/50 mix: deliveries per second of `Hub::broadcast_publication` (median, min and
//! max over several rounds; each round's queues are drained between rounds, outside the
//! timing; the three scenarios take turns round by round), and heap allocations counted
//! with dhat per delivery, for a client's first delivery (cold queue) and in steady state
//! (queues drained, their capacity kept), and per publication in steady state.
//!
//! dhat is the global allocator of this binary. Timing runs with no dhat profiler active
//! (dhat then only forwards to the system allocator behind an uncontended lock); the
//! allocation counts run under a profiler in testing mode (no file is written).
//! A benchmark prints figures; it asserts only that every subscriber got the publication.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::engine::Publication;
use herald::hub::{ClientHandle, Hub};
use herald::protocol::Encoding;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const SUBSCRIBERS: usize = 10_000;
const WARMUP_ROUNDS: usize = 3;
const ROUNDS: usize = 75;
const STEADY_ALLOC_ROUNDS: u64 = 3;
const CHANNEL: &str = "news:bench";
const EPOCH: &str = "bench-epoch";
/// Per-client queue limit: far above one round's bytes, so nobody is disconnected.
const MAX_QUEUE_BYTES: usize = 1 << 20;

/// A typical small chat payload (~100 bytes of JSON).
const PAYLOAD: &[u8] =
    br#"{"user":"alice","text":"hello everybody, this is a short chat message","ts":1732492800}"#;

struct Scenario {
    name: &'static str,
    encoding_of: fn(usize) -> Encoding,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "JSON",
        encoding_of: |_| Encoding::Json,
    },
    Scenario {
        name: "Protobuf",
        encoding_of: |_| Encoding::Protobuf,
    },
    Scenario {
        name: "50/50 mix",
        encoding_of: |i| {
            if i % 2 == 0 {
                Encoding::Json
            } else {
                Encoding::Protobuf
            }
        },
    },
];

struct Setup {
    hub: Hub,
    clients: Vec<Arc<ClientHandle>>,
}

fn setup(scenario: &Scenario) -> Setup {
    let hub = Hub::new();
    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let client = hub.new_client((scenario.encoding_of)(i), MAX_QUEUE_BYTES);
        hub.add_subscriber(CHANNEL, &client, false);
        hub.activate(CHANNEL, &client, None, None);
        clients.push(client);
    }
    Setup { hub, clients }
}

fn publication(offset: u64) -> Publication {
    Publication {
        data: Bytes::from_static(PAYLOAD),
        offset,
        ..Default::default()
    }
}

/// Broadcasts one publication; returns the time it took.
fn broadcast(setup: &Setup, offset: u64) -> Duration {
    let publication = publication(offset);
    let start = Instant::now();
    let delivered = setup
        .hub
        .broadcast_publication(CHANNEL, &publication, EPOCH);
    let elapsed = start.elapsed();
    assert_eq!(
        delivered.delivered, SUBSCRIBERS,
        "every subscriber gets the publication"
    );
    elapsed
}

/// Takes every client's queued messages, as the transports' writers do.
fn drain(rt: &tokio::runtime::Runtime, setup: &Setup, expected_per_client: usize) {
    rt.block_on(async {
        for client in &setup.clients {
            let batch = client.queue.next_batch().await;
            assert_eq!(batch.items.len(), expected_per_client);
            assert!(batch.close.is_none(), "no client is disconnected");
        }
    });
}

struct Allocs {
    cold_per_delivery: f64,
    steady_per_delivery: f64,
    steady_per_broadcast: f64,
    steady_bytes_per_delivery: f64,
}

/// Counts heap blocks under a dhat profiler: the first delivery to each client, then
/// steady state. Leaves every queue drained.
fn count_allocs(rt: &tokio::runtime::Runtime, setup: &Setup, offset: &mut u64) -> Allocs {
    let profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get();
    *offset += 1;
    broadcast(setup, *offset);
    let after = dhat::HeapStats::get();
    let cold_blocks = after.total_blocks - before.total_blocks;
    drain(rt, setup, 1);
    let (mut steady_blocks, mut steady_bytes) = (0, 0);
    for _ in 0..STEADY_ALLOC_ROUNDS {
        let before = dhat::HeapStats::get();
        *offset += 1;
        broadcast(setup, *offset);
        let after = dhat::HeapStats::get();
        steady_blocks += after.total_blocks - before.total_blocks;
        steady_bytes += after.total_bytes - before.total_bytes;
        drain(rt, setup, 1);
    }
    drop(profiler);
    let deliveries = (STEADY_ALLOC_ROUNDS * SUBSCRIBERS as u64) as f64;
    Allocs {
        cold_per_delivery: cold_blocks as f64 / SUBSCRIBERS as f64,
        steady_per_delivery: steady_blocks as f64 / deliveries,
        steady_per_broadcast: steady_blocks as f64 / STEADY_ALLOC_ROUNDS as f64,
        steady_bytes_per_delivery: steady_bytes as f64 / deliveries,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore any arguments.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    println!(
        "hub fan-out: 1 publication ({} B payload) to {SUBSCRIBERS} subscribers of one channel, \
         {ROUNDS} timed rounds after {WARMUP_ROUNDS} warm-up rounds",
        PAYLOAD.len()
    );
    let started = Instant::now();
    let setups: Vec<Setup> = SCENARIOS.iter().map(setup).collect();
    let mut offsets = vec![0u64; setups.len()];
    let allocs: Vec<Allocs> = setups
        .iter()
        .zip(&mut offsets)
        .map(|(s, offset)| count_allocs(&rt, s, offset))
        .collect();

    // Timing, with no profiler running. Scenarios take turns round by round (in rotating
    // order) so that a busy machine slows them alike.
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); setups.len()];
    for round in 0..WARMUP_ROUNDS + ROUNDS {
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            offsets[i] += 1;
            let elapsed = broadcast(&setups[i], offsets[i]);
            drain(&rt, &setups[i], 1);
            if round >= WARMUP_ROUNDS {
                rates[i].push(SUBSCRIBERS as f64 / elapsed.as_secs_f64());
            }
        }
    }

    println!();
    println!(
        "{:<10} {:>14} {:>12} {:>12} {:>9} {:>13} {:>14} {:>15} {:>14}",
        "encoding",
        "deliveries/s",
        "min",
        "max",
        "ns/deliv",
        "allocs/deliv",
        "allocs/deliv",
        "allocs/publish",
        "bytes/deliv"
    );
    println!(
        "{:<10} {:>14} {:>12} {:>12} {:>9} {:>13} {:>14} {:>15} {:>14}",
        "", "(median)", "", "", "(median)", "(cold queue)", "(steady)", "(steady)", "(steady)"
    );
    for ((scenario, rates), allocs) in SCENARIOS.iter().zip(&mut rates).zip(&allocs) {
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "{:<10} {:>14.0} {:>12.0} {:>12.0} {:>9.1} {:>13.3} {:>14.4} {:>15.1} {:>14.2}",
            scenario.name,
            median,
            rates[0],
            rates[rates.len() - 1],
            1e9 / median,
            allocs.cold_per_delivery,
            allocs.steady_per_delivery,
            allocs.steady_per_broadcast,
            allocs.steady_bytes_per_delivery,
        );
    }
    println!();
    println!(
        "cold queue: first delivery to each client (its queue allocates its buffer); steady: \
         queues drained between rounds, capacity kept.\nallocs: dhat total_blocks after minus \
         before one broadcast, per subscriber (allocs/deliv) or in all (allocs/publish)."
    );
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
}
