//! The listener: HTTP/1.1 with the bounds a public port needs. Headers must arrive within a
//! timeout (also between keep-alive requests), a connection with no traffic either way is closed,
//! header blocks are capped, and connections are capped in all and per client address, under a
//! ceiling derived from `RLIMIT_NOFILE`, so a flood of sockets can never take the descriptors
//! running jobs need. Connections over a cap get a `503` and are closed at once.
use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{extract::ConnectInfo, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The listener's bounds, from configuration.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// A request's header block must be complete this long after the connection opened or the
    /// previous response was sent.
    pub header_read_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a request may take, body included.
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// 0: no per-address cap (behind a reverse proxy every client shares its address).
    pub max_connections_per_address: usize,
    pub max_header_bytes: usize,
}

/// Descriptors kept for everything but client connections: the database, destination files,
/// outbound connections of downloads, the runtime's own, refused connections being drained.
pub fn reserved_descriptors(max_total_downloads: usize) -> u64 {
    // Refused connections being drained hold a descriptor each, too.
    128 + MAX_DRAINING as u64 + 4 * max_total_downloads as u64
}

/// Fewest client connections worth starting with.
const MIN_CONNECTIONS: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("RLIMIT_NOFILE allows {limit} open files, too few: {reserved} are kept for jobs and at least {MIN_CONNECTIONS} are needed for connections; raise it (ulimit -n, or LimitNOFILE= in a systemd unit)")]
    TooFewDescriptors { limit: u64, reserved: u64 },
    #[error("reading RLIMIT_NOFILE failed")]
    Rlimit(#[source] std::io::Error),
}

/// Fit the connection caps to the descriptor limit: all connections beside `reserved`, and one
/// address to at most half of them, so one client can never lock out the rest. The soft limit is
/// raised to the hard one first (as Go and systemd services do), since 1024 is a common default.
pub fn fit_to_descriptors(limits: &mut ServerLimits, reserved: u64) -> Result<(), ServerError> {
    let limit = raise_nofile_limit().map_err(ServerError::Rlimit)?;
    if limit < reserved + MIN_CONNECTIONS {
        return Err(ServerError::TooFewDescriptors { limit, reserved });
    }
    let room = (limit - reserved) as usize;
    if limits.max_connections > room {
        tracing::warn!(
            configured = limits.max_connections,
            allowed = room,
            rlimit_nofile = limit,
            "SERVER_MAX_CONNECTIONS lowered to fit the open-file limit (raise ulimit -n to allow more)"
        );
        limits.max_connections = room;
    }
    let half = (limits.max_connections / 2).max(1);
    if limits.max_connections_per_address > half {
        tracing::info!(
            configured = limits.max_connections_per_address,
            allowed = half,
            "SERVER_MAX_CONNECTIONS_PER_ADDRESS lowered to half of SERVER_MAX_CONNECTIONS"
        );
        limits.max_connections_per_address = half;
    }
    Ok(())
}

fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write to and read from the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// Serve `router` until `stop` is cancelled; open connections then get `drain` to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stop: CancellationToken,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let caps = Caps::new(&limits);
    let mut accept_errors = Throttle::new(Duration::from_secs(10));
    let draining = Arc::new(Semaphore::new(MAX_DRAINING));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and the like: connections already open keep being served; pause so the
                // loop does not spin while descriptors are short.
                if accept_errors.ready() {
                    tracing::warn!(error = %e, "could not accept a connection");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Some(slot) = caps.admit(client_of(peer.ip())) else {
            refuse(stream, &draining);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // The limit itself is checked on the parsed block (`routes::response_policy`);
            // hyper's buffer only bounds memory, with room for one read past the limit.
            .max_buf_size(limits.max_header_bytes + MIN_HEADER_BUFFER);
        let conn = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, bad request line): nothing to act on.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::info!("closed connections still open at shutdown");
    }
}

/// Wait after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// hyper's smallest read buffer.
const MIN_HEADER_BUFFER: usize = 8192;

/// Refused connections whose request is read out before closing, so the client sees the 503
/// rather than a reset; past this many at once they are just closed (a flood must not hold
/// descriptors).
const MAX_DRAINING: usize = 64;
const DRAIN_FOR: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 64 * 1024;

/// Answer a connection over a cap: one write that cannot block, then a short, bounded read of
/// what the client sent (closing with unread data would reset the connection), then close.
fn refuse(stream: TcpStream, draining: &Arc<Semaphore>) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    let _ = stream.try_write(BUSY);
    let Ok(permit) = draining.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        let drain = async {
            while read < DRAIN_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
        drop(permit);
    });
}

/// Open connections per client address.
type AddressCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Connection counts, in all and per address.
struct Caps {
    all: Arc<Semaphore>,
    per_address: usize,
    by_address: AddressCounts,
    refusals: Mutex<Throttle>,
}

/// A connection's place under the caps, given back when it closes.
struct Slot {
    _permit: OwnedSemaphorePermit,
    address: Option<(IpAddr, AddressCounts)>,
}

impl Caps {
    fn new(limits: &ServerLimits) -> Self {
        Self {
            all: Arc::new(Semaphore::new(limits.max_connections)),
            per_address: limits.max_connections_per_address,
            by_address: Arc::default(),
            refusals: Mutex::new(Throttle::new(Duration::from_secs(10))),
        }
    }

    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let Ok(permit) = self.all.clone().try_acquire_owned() else {
            self.log_refusal("SERVER_MAX_CONNECTIONS", ip);
            return None;
        };
        if self.per_address == 0 {
            return Some(Slot { _permit: permit, address: None });
        }
        let mut counts = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_default();
        if *n >= self.per_address {
            drop(counts);
            self.log_refusal("SERVER_MAX_CONNECTIONS_PER_ADDRESS", ip);
            return None;
        }
        *n += 1;
        Some(Slot { _permit: permit, address: Some((ip, self.by_address.clone())) })
    }

    fn log_refusal(&self, cap: &str, ip: IpAddr) {
        let mut throttle = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if throttle.ready() {
            tracing::warn!(%ip, cap, refused_since_last = throttle.skipped, "connection refused: over a cap");
            throttle.skipped = 0;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((ip, counts)) = &self.address {
            let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = counts.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(ip);
                }
            }
        }
    }
}

/// At most one log line per interval; counts what it held back.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self { every, last: None, skipped: 0 }
    }

    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.skipped += 1;
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// A socket that fails with `TimedOut` once nothing has been read or written for `idle`: hyper
/// closes it then. Reset by every byte either way, so slow but live transfers go on.
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration) -> Self {
        Self { inner, idle, timer: Box::pin(tokio::time::sleep(idle)) }
    }

    fn progressed(&mut self) {
        self.timer.as_mut().reset(tokio::time::Instant::now() + self.idle);
    }

    /// After a write: bytes out are progress, a stuck socket times out.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                self.progressed();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check(cx).map(|r| r.map(|()| 0)),
        }
    }

    /// `Pending` from the socket: time out if the idle deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The address a request came from (set by `serve` on every request), as a key for limits and
/// logs; "unknown" where the router is served some other way.
pub fn peer_key(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".into(), |c| client_of(c.0.ip()).to_string())
}

/// The client an address stands for: itself for IPv4 (and IPv4-mapped IPv6), its /64 for IPv6
/// (one host is routinely given a whole /64, so counting /128s would let it take any number of
/// slots).
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ones_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        assert_ne!(client_of(a), client_of(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_of(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_of(v4), v4);
    }
}
