//! Publishers: `--publishers` concurrent tasks, each with one keep-alive connection to the
//! server API (`POST /api/publish` with `X-API-Key`, or gRPC `CentrifugoApi/Publish` with
//! `authorization: apikey`), one request in flight each, paced to a total rate. Every
//! payload carries a stamp (channel, publisher, sequence, send time); a sequence number
//! advances only when the server acknowledged the publication, so receivers can count
//! exactly what they should have got.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::clients::Target;
use crate::net::HttpClient;
use crate::payload::{self, Stamp};
use crate::stats::{Latency, LatencySummary};

/// Which server API publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PublishApi {
    /// `POST /api/publish`, JSON, `X-API-Key`.
    Http,
    /// gRPC `centrifugal.centrifugo.api.CentrifugoApi/Publish`.
    Grpc,
}

/// What publishers share across phases: the sequence counters live here.
#[derive(Debug)]
pub struct Publishers {
    /// Channel names; index = stamp channel.
    pub channels: Vec<String>,
    /// Publisher tasks.
    pub count: u32,
    /// Payload size in bytes (the stamp alone when smaller).
    pub payload_size: usize,
    /// API used.
    pub api: PublishApi,
    target: Target,
    http: HttpClient,
    /// Acknowledged publications per (channel, publisher): `channel * count + publisher`.
    published: Vec<AtomicU64>,
    /// Failed publish requests.
    pub errors: AtomicU64,
    /// Round-trip time of publish calls.
    pub api_latency: Mutex<Latency>,
    first_errors: Mutex<Vec<String>>,
}

/// What one publishing phase did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseOutcome {
    /// Acknowledged publications.
    pub published: u64,
    /// Time spent publishing, seconds.
    pub secs: f64,
    /// Acknowledged publications per second.
    pub rate: f64,
    /// Failed publish requests.
    pub errors: u64,
}

impl Publishers {
    /// Publishers for `channels`.
    pub fn new(
        target: Target,
        channels: Vec<String>,
        count: u32,
        payload_size: usize,
        api: PublishApi,
    ) -> Publishers {
        let count = count.max(1);
        let n = channels.len() * count as usize;
        Publishers {
            published: (0..n).map(|_| AtomicU64::new(0)).collect(),
            channels,
            count,
            payload_size,
            api,
            http: crate::net::http_client(None, count as usize + 4),
            target,
            errors: AtomicU64::new(0),
            api_latency: Mutex::new(Latency::default()),
            first_errors: Mutex::new(Vec::new()),
        }
    }

    /// Acknowledged publications on `channel` by `publisher`.
    pub fn published(&self, channel: usize, publisher: u32) -> u64 {
        self.published[channel * self.count as usize + publisher as usize].load(Ordering::Relaxed)
    }

    /// Acknowledged publications on `channel`, all publishers.
    pub fn published_on(&self, channel: usize) -> u64 {
        (0..self.count).map(|p| self.published(channel, p)).sum()
    }

    /// Acknowledged publications, all channels.
    pub fn total(&self) -> u64 {
        self.published
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// The first errors seen.
    pub fn first_errors(&self) -> Vec<String> {
        self.first_errors.lock().clone()
    }

    /// Round-trip time of publish calls so far.
    pub fn api_latency(&self) -> LatencySummary {
        self.api_latency.lock().summary()
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_errors.lock();
        if f.len() < 10 {
            f.push(what);
        }
    }

    /// Publishes at `rate` per second in total (0: as fast as the server answers) for
    /// `duration`, or until `cancel`.
    pub async fn run(
        self: &Arc<Self>,
        rate: f64,
        duration: Duration,
        cancel: &CancellationToken,
    ) -> PhaseOutcome {
        let before = self.total();
        let errors_before = self.errors.load(Ordering::Relaxed);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..self.count {
            let me = self.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                me.publisher(p, rate, start, duration, cancel).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        // A paced phase lasts its duration even when the last request went out earlier.
        let secs = if rate > 0.0 && !cancel.is_cancelled() {
            start.elapsed().max(duration).as_secs_f64()
        } else {
            start.elapsed().as_secs_f64()
        };
        let published = self.total() - before;
        PhaseOutcome {
            published,
            secs,
            rate: if secs > 0.0 {
                published as f64 / secs
            } else {
                0.0
            },
            errors: self.errors.load(Ordering::Relaxed) - errors_before,
        }
    }

    async fn publisher(
        &self,
        p: u32,
        rate: f64,
        start: Instant,
        duration: Duration,
        cancel: CancellationToken,
    ) {
        let interval = if rate > 0.0 {
            Some(Duration::from_secs_f64(f64::from(self.count) / rate))
        } else {
            None
        };
        let mut grpc = None;
        if self.api == PublishApi::Grpc {
            match crate::clients::grpc_channel(None, self.target.grpc_api_addr, None).await {
                Ok(ch) => grpc = Some(api::centrifugo_api_client::CentrifugoApiClient::new(ch)),
                Err(e) => {
                    self.error(format!("gRPC API connect: {e}"));
                    return;
                }
            }
        }
        let end = start + duration;
        let mut body = Vec::with_capacity(self.payload_size + 128);
        let mut k: u64 = 0;
        let n_channels = self.channels.len();
        loop {
            if let Some(iv) = interval {
                // Publishers take turns (phase p/count of the interval): started in step, they
                // would publish in bursts of `count`, and a burst is not the rate asked for.
                let due = start + iv.mul_f64(k as f64 + f64::from(p) / f64::from(self.count));
                if due >= end {
                    break;
                }
                if due > Instant::now() {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep_until(due.into()) => {}
                    }
                }
            } else if Instant::now() >= end {
                break;
            }
            if cancel.is_cancelled() {
                break;
            }
            let c = ((k as usize) * self.count as usize + p as usize) % n_channels;
            k += 1;
            let slot = &self.published[c * self.count as usize + p as usize];
            let stamp = Stamp {
                channel: c as u32,
                publisher: p,
                seq: slot.load(Ordering::Relaxed),
                t_ns: payload::now_ns(),
            };
            let sent = Instant::now();
            let ok = match &mut grpc {
                Some(client) => {
                    let mut data = Vec::with_capacity(self.payload_size + 64);
                    payload::write(&mut data, &stamp, self.payload_size);
                    let mut req = tonic::Request::new(api::PublishRequest {
                        channel: self.channels[c].clone(),
                        data: Bytes::from(data),
                        ..Default::default()
                    });
                    if let Ok(v) = format!("apikey {}", self.target.api_key).parse() {
                        req.metadata_mut().insert("authorization", v);
                    }
                    match client.publish(req).await {
                        Ok(r) => match r.into_inner().error {
                            None => Ok(()),
                            Some(e) => Err(format!("publish error {}: {}", e.code, e.message)),
                        },
                        Err(s) => Err(format!("gRPC publish: {s}")),
                    }
                }
                None => {
                    body.clear();
                    body.extend_from_slice(b"{\"channel\":");
                    serde_json::to_writer(&mut body, &self.channels[c]).ok();
                    body.extend_from_slice(b",\"data\":");
                    payload::write(&mut body, &stamp, self.payload_size);
                    body.push(b'}');
                    self.http_publish(Bytes::copy_from_slice(&body)).await
                }
            };
            match ok {
                Ok(()) => {
                    slot.fetch_add(1, Ordering::Relaxed);
                    self.api_latency
                        .lock()
                        .record_us(sent.elapsed().as_micros() as u64);
                }
                Err(e) => {
                    self.error(e);
                    // Do not hammer a server that refuses.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn http_publish(&self, body: Bytes) -> Result<(), String> {
        let req = http::Request::post(format!("http://{}/api/publish", self.target.addr))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-api-key", &self.target.api_key)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http.request(req))
            .await
            .map_err(|_| "publish: no answer within 10 s".to_string())?
            .map_err(|e| format!("publish: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("publish body: {e}"))?
            .to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!(
                "publish: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        if memchr::memmem::find(&bytes, b"\"error\"").is_some() {
            return Err(format!("publish: {}", String::from_utf8_lossy(&bytes)));
        }
        Ok(())
    }
}

/// Calls a server API method over HTTP (JSON); returns the `result`.
pub async fn api_call(
    http: &HttpClient,
    target: &Target,
    method: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let req = http::Request::post(format!("http://{}/api/{method}", target.addr))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-api-key", &target.api_key)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .map_err(|_| format!("API {method}: no answer within 10 s"))?
        .map_err(|e| format!("API {method}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!(
            "API {method}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("API {method}: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("API {method}: {e}"));
    }
    Ok(v.get("result").cloned().unwrap_or(serde_json::Value::Null))
}
