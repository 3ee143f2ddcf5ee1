//! Sockets: TCP connections bound to a chosen loopback source address (127.0.0.2, ...,
//! to get past the ~28,000 ephemeral ports of one source address), a byte-counting wrapper
//! for the wire-size figures, and a pooled HTTP client for the server API and `/emulation`.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::stats::Recorder;

/// Opens a TCP connection to `dst`, from `src` (port chosen by the kernel) when given.
/// Nagle is off, as every real-time client has it.
pub async fn connect_tcp(src: Option<IpAddr>, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = src {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A stream that adds the bytes it reads to [`Recorder::wire_bytes`].
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    counter: Option<Arc<Recorder>>,
}

impl<T> Counted<T> {
    /// Wraps `inner`; counts into `counter` when given.
    pub fn new(inner: T, counter: Option<Arc<Recorder>>) -> Self {
        Counted { inner, counter }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(c)) = (&r, &self.counter) {
            let n = buf.filled().len() - before;
            c.wire_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

impl Connection for Counted<TcpStream> {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Connects to whatever host the URI names (loopback only in practice), from `src`.
#[derive(Clone, Debug)]
pub struct Connector {
    /// Source address to bind.
    pub src: Option<IpAddr>,
    /// Where read bytes are counted.
    pub counter: Option<Arc<Recorder>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Counted<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let src = self.src;
        let counter = self.counter.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            let ip: IpAddr = host
                .parse()
                .map_err(|_| io::Error::other(format!("not an IP address: {host}")))?;
            let tcp = connect_tcp(src, SocketAddr::new(ip, port)).await?;
            Ok(TokioIo::new(Counted::new(tcp, counter)))
        })
    }
}

/// A pooled keep-alive HTTP/1.1 client (server API calls, `/emulation`).
pub type HttpClient = Client<Connector, Full<Bytes>>;

/// A pooled HTTP/1.1 client from `src`, keeping up to `max_idle` idle connections.
pub fn http_client(src: Option<IpAddr>, max_idle: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(Connector { src, counter: None })
}

/// Parses source addresses: `127.0.0.2-127.0.0.9` (a range), or a comma list.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((a, b)) = spec.split_once('-') {
        let a: std::net::Ipv4Addr = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
        let b: std::net::Ipv4Addr = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            return Err(format!("bad source range {spec}"));
        }
        return Ok((a..=b)
            .map(|x| IpAddr::V4(std::net::Ipv4Addr::from(x)))
            .collect());
    }
    spec.split(',')
        .map(|s| s.trim().parse().map_err(|e| format!("{s}: {e}")))
        .collect()
}

/// Aborts a task when dropped (a connection's driver task).
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lists() {
        let r = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].to_string(), "127.0.0.4");
        assert_eq!(parse_sources("127.0.0.1, 127.0.0.9").unwrap().len(), 2);
        assert!(parse_sources("").unwrap().is_empty());
        assert!(parse_sources("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_sources("x").is_err());
    }

    #[tokio::test]
    async fn binds_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let src: IpAddr = "127.0.0.3".parse().unwrap();
        let (client, accepted) = tokio::join!(connect_tcp(Some(src), addr), listener.accept());
        let client = client.unwrap();
        assert_eq!(client.local_addr().unwrap().ip(), src);
        assert_eq!(accepted.unwrap().1.ip(), src);
    }
}
