//! What happens to a TCP connection before HTTP takes it: the listening socket (with its
//! accept backlog), the deadline a new connection has to say which protocol it speaks,
//! and the rate-limited warning when accepting fails.
//!
//! hyper's own timeouts start once it knows the protocol: `header_read_timeout` covers an
//! HTTP/1.1 request head, keep-alive pings cover an HTTP/2 connection. Before that, a
//! connection that sends nothing, one byte, or part of the HTTP/2 preface would be held
//! forever, and enough of them exhaust the open-file limit. [`FirstBytesDeadline`] closes
//! that gap: from accept until the first request head (HTTP/1.1) or the preface and the
//! client's first frame header (HTTP/2) have arrived, reads fail once the deadline passes.
//! After TLS selected `http/1.1` by ALPN it also refuses the HTTP/2 preface: hyper-util's
//! upgrade-capable auto connection sniffs the protocol whatever it is told, and the
//! protocol ALPN chose is the only one to be spoken (RFC 7301).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::{Instant, Sleep};

/// The connection preface every HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header: after the preface the client sends at least one
/// (its SETTINGS frame).
const H2_FRAME_HEADER: usize = 9;
/// The backlog used when the system's maximum cannot be read.
const FALLBACK_BACKLOG: u32 = 4096;

/// The accept backlog to ask for: `configured`, or the system's maximum
/// (`/proc/sys/net/core/somaxconn`) when it is 0. The kernel caps any value at that
/// maximum, so asking for more has no effect.
pub fn backlog(configured: u32) -> u32 {
    if configured != 0 {
        return configured;
    }
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(FALLBACK_BACKLOG)
}

/// Binds `address` (`host:port`; a host name is resolved, the first address that binds
/// wins) and listens with `backlog` pending connections.
pub async fn bind(address: &str, backlog: u32) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(address).await? {
        match bind_one(addr, backlog) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to bind")))
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std and tokio do for their listeners: a restarted server can bind its port while
    // connections of the previous process are still in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// What the connection has shown of itself so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Fewer bytes than tell HTTP/2's preface from an HTTP/1.1 request line; `matched` of
    /// them equal the preface's start.
    Undecided { matched: usize },
    /// HTTP/1.1: waiting for the blank line that ends the first request head; `tail` is how
    /// much of `\r\n\r\n` the bytes so far end with.
    Http1Head { tail: usize },
    /// HTTP/2: the preface is complete; `seen` bytes of the first frame header arrived.
    Http2Frame { seen: usize },
}

/// An I/O stream whose reads fail with `TimedOut` once `deadline` passes, until the
/// connection has sent its first HTTP/1.1 request head or its HTTP/2 preface and first
/// frame header; from then on it only passes reads and writes through.
#[derive(Debug)]
pub struct FirstBytesDeadline<S> {
    inner: S,
    /// `None` once the protocol is recognised: no timer is kept for the rest of the
    /// connection's life.
    deadline: Option<Pin<Box<Sleep>>>,
    phase: Phase,
    /// The HTTP/2 preface fails the read (TLS negotiated `http/1.1`).
    refuse_http2: bool,
}

/// What the bytes read so far tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    /// Not yet the protocol's opening.
    Waiting,
    /// The first request head or the HTTP/2 preface and a frame header.
    Recognised,
    /// The HTTP/2 preface where only HTTP/1.1 may be spoken.
    RefusedHttp2,
}

impl<S> FirstBytesDeadline<S> {
    /// Wraps `inner`; reads must recognise the protocol before `deadline`.
    pub fn new(inner: S, deadline: Instant) -> Self {
        FirstBytesDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            phase: Phase::Undecided { matched: 0 },
            refuse_http2: false,
        }
    }

    /// As [`new`](Self::new), for a connection on which TLS selected `http/1.1`: the
    /// HTTP/2 preface fails the read, so the connection closes without an answer.
    pub fn http1_only(inner: S, deadline: Instant) -> Self {
        FirstBytesDeadline {
            refuse_http2: true,
            ..Self::new(inner, deadline)
        }
    }

    /// Advances the phase over newly read bytes.
    fn observe(&mut self, bytes: &[u8]) -> Observed {
        for &b in bytes {
            self.phase = match self.phase {
                Phase::Undecided { matched } if b == H2_PREFACE[matched] => {
                    if matched + 1 == H2_PREFACE.len() {
                        if self.refuse_http2 {
                            return Observed::RefusedHttp2;
                        }
                        Phase::Http2Frame { seen: 0 }
                    } else {
                        Phase::Undecided {
                            matched: matched + 1,
                        }
                    }
                }
                // Not the preface: HTTP/1.1 (or garbage, which hyper answers and closes).
                Phase::Undecided { matched } => {
                    let tail = H2_PREFACE[..matched]
                        .iter()
                        .chain(std::iter::once(&b))
                        .fold(0, |tail, &b| next_tail(tail, b));
                    if tail == 4 {
                        return Observed::Recognised;
                    }
                    Phase::Http1Head { tail }
                }
                Phase::Http1Head { tail } => {
                    let tail = next_tail(tail, b);
                    if tail == 4 {
                        return Observed::Recognised;
                    }
                    Phase::Http1Head { tail }
                }
                Phase::Http2Frame { seen } => {
                    if seen + 1 == H2_FRAME_HEADER {
                        return Observed::Recognised;
                    }
                    Phase::Http2Frame { seen: seen + 1 }
                }
            };
        }
        Observed::Waiting
    }
}

/// How much of `\r\n\r\n` a byte stream ends with after `b`, given it ended with `tail`.
fn next_tail(tail: usize, b: u8) -> usize {
    const END: &[u8] = b"\r\n\r\n";
    if b == END[tail] {
        tail + 1
    } else if b == b'\r' {
        1
    } else {
        0
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.deadline.is_none() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => match this.observe(&buf.filled()[before..]) {
                Observed::Waiting => Poll::Ready(Ok(())),
                Observed::Recognised => {
                    this.deadline = None;
                    Poll::Ready(Ok(()))
                }
                Observed::RefusedHttp2 => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the HTTP/2 preface on a connection where TLS selected http/1.1",
                ))),
            },
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete request head or HTTP/2 preface within http_server.handshake_timeout",
                ))),
                _ => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs failed accepts (out of file descriptors, mostly) at most once per interval, with
/// the number of failures since the last line: a full descriptor table makes every accept
/// fail, and one line per failure would flood the log.
#[derive(Debug)]
pub struct AcceptErrorLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrorLog {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        AcceptErrorLog {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Records a failure; logs it when the last line is older than the interval.
    pub fn failed(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %error,
            more_since_last_warning = self.suppressed,
            "accept failed; new connections wait until descriptors are free (raise the open-file limit or lower http_server.handshake_timeout)"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(chunks: &[&[u8]], refuse_http2: bool) -> Observed {
        let mut io = FirstBytesDeadline {
            inner: (),
            deadline: None,
            phase: Phase::Undecided { matched: 0 },
            refuse_http2,
        };
        chunks
            .iter()
            .map(|c| io.observe(c))
            .find(|o| *o != Observed::Waiting)
            .unwrap_or(Observed::Waiting)
    }

    fn recognised(chunks: &[&[u8]]) -> bool {
        observed(chunks, false) == Observed::Recognised
    }

    #[test]
    fn after_alpn_http1_the_http2_preface_is_refused_and_http1_passes() {
        assert_eq!(observed(&[H2_PREFACE], true), Observed::RefusedHttp2);
        assert_eq!(
            observed(&[&H2_PREFACE[..10], &H2_PREFACE[10..]], true),
            Observed::RefusedHttp2
        );
        assert_eq!(
            observed(&[b"GET / HTTP/1.1\r\n\r\n"], true),
            Observed::Recognised
        );
        assert_eq!(
            observed(&[b"PRI * HTTP/1.1\r\n\r\n"], true),
            Observed::Recognised
        );
    }

    #[test]
    fn an_http1_head_is_recognised_at_its_blank_line() {
        assert!(!recognised(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]));
        assert!(recognised(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(recognised(&[
            b"GET / HTTP/1.1\r\n",
            b"Host: a\r",
            b"\n\r",
            b"\n"
        ]));
        assert!(!recognised(&[b"G"]));
        assert!(!recognised(&[b"GET / HTTP/1.1\r\n\r\r\n"]));
    }

    #[test]
    fn http2_needs_the_whole_preface_and_a_frame_header() {
        assert!(!recognised(&[&H2_PREFACE[..23]]));
        assert!(!recognised(&[H2_PREFACE]));
        assert!(!recognised(&[H2_PREFACE, &[0; 8]]));
        assert!(recognised(&[H2_PREFACE, &[0; 9]]));
        assert!(recognised(&[&H2_PREFACE[..5], &H2_PREFACE[5..], &[0; 9]]));
    }

    #[test]
    fn a_partial_preface_that_turns_into_http1_is_scanned_as_http1() {
        assert!(!recognised(&[b"PRI * HTTP/1.1\r\n"]));
        assert!(recognised(&[b"PRI * HTTP/1.1\r\n\r\n"]));
    }

    #[test]
    fn backlog_defaults_to_the_system_maximum() {
        assert_eq!(backlog(17), 17);
        let system = backlog(0);
        assert!(system > 0);
        if let Ok(s) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") {
            assert_eq!(system, s.trim().parse::<u32>().unwrap());
        }
    }
}
