//! HTTP/1.1 by hand, for tests that must control every byte a client sends (a head alone,
//! a body one byte at a time, nothing at all) and see exactly what the server does with
//! the connection: one response read from any byte stream (TCP or TLS), and whether and
//! when the server closed it. Every read is bounded by the caller's deadline.

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// One HTTP/1.1 response as it came off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code of the status line.
    pub status: u16,
    /// The status line and header lines, as text.
    pub head: String,
    /// The body (`Content-Length` bytes, or everything up to EOF without it).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The server API's error envelope `{"error": {"code": N, "message": "..."}}`:
    /// `(code, message)`; panics, saying what came instead, when the body is not one.
    pub fn error_envelope(&self) -> (u64, String) {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}\n{}",
                self.status,
                String::from_utf8_lossy(&self.body),
                self.head
            )
        });
        let code = v["error"]["code"].as_u64();
        let message = v["error"]["message"].as_str();
        match (code, message) {
            (Some(code), Some(message)) => (code, message.to_string()),
            _ => panic!("HTTP {}: not the error envelope: {v}", self.status),
        }
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one HTTP/1.1 response from `io`; `Err` says what arrived when the connection
/// ended, failed or `deadline` passed first.
pub async fn read_response<R: AsyncRead + Unpin>(
    io: &mut R,
    deadline: Instant,
) -> Result<RawResponse, String> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if read_more(io, &mut buf, deadline).await? == 0 {
            return Err(format!(
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end])
        .trim_end()
        .to_string();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {head:?}"))?;
    let mut response = RawResponse {
        status,
        head,
        body: buf.split_off(head_end),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        return Err(format!(
            "chunked responses are not read here: {}",
            response.head
        ));
    }
    match response.header("content-length") {
        Some(len) => {
            let len: usize = len
                .parse()
                .map_err(|e| format!("bad Content-Length {len:?}: {e}"))?;
            while response.body.len() < len {
                if read_more(io, &mut response.body, deadline).await? == 0 {
                    return Err(format!(
                        "connection closed after {} of {len} body bytes",
                        response.body.len()
                    ));
                }
            }
            response.body.truncate(len);
        }
        None => while read_more(io, &mut response.body, deadline).await? > 0 {},
    }
    Ok(response)
}

async fn read_more<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, String> {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
        Err(_) => Err(format!(
            "no complete response by the deadline; got {:?}",
            String::from_utf8_lossy(buf)
        )),
        Ok(Err(e)) => Err(format!(
            "read failed ({e}); got {:?}",
            String::from_utf8_lossy(buf)
        )),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
    }
}

/// How a connection ended while it was read to its end.
#[derive(Debug)]
pub struct Ending {
    /// When the server closed it (EOF or a reset), or `None` when the deadline came first.
    pub closed_at: Option<Instant>,
    /// Whatever the server sent before.
    pub bytes: Vec<u8>,
}

/// Reads `io` until the server closes it (EOF or an error such as a reset) or `deadline`.
pub async fn read_to_close<R: AsyncRead + Unpin>(io: &mut R, deadline: Instant) -> Ending {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Err(_) => {
                return Ending {
                    closed_at: None,
                    bytes,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ending {
                    closed_at: Some(Instant::now()),
                    bytes,
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}
