//! A minimal HTTP/1.1 server for `/metrics`.
//!
//! Hand-written on `std::net` rather than with a framework: it serves one
//! path, and what matters is that nothing can hang it — every connection
//! gets a read and a write timeout, the request head has a size cap and an
//! overall deadline, and connections are served one at a time (a scrape is
//! small; a slow client delays the next by at most the timeouts). The
//! accept loop polls with a short timeout so it notices shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{LoaderError, Result};

/// How often the accept loop checks for shutdown.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// Limits of the server.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// The whole request head must arrive within this.
    pub read_timeout: Duration,
    /// Writing the response must finish within this.
    pub write_timeout: Duration,
    /// Largest request head.
    pub max_request: usize,
}

/// A running server.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `render()` at `/metrics` until `stop` is set.
    pub fn start(
        addr: SocketAddr,
        limits: HttpLimits,
        stop: Arc<AtomicBool>,
        render: impl Fn() -> String + Send + 'static,
    ) -> Result<MetricsServer> {
        let listener = TcpListener::bind(addr).map_err(|source| LoaderError::Listen {
            addr: addr.to_string(),
            source,
        })?;
        let addr = listener
            .local_addr()
            .map_err(|source| LoaderError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let thread = std::thread::Builder::new()
            .name("probe-metrics".into())
            .spawn(move || accept_loop(listener, limits, &stop, &render))
            .map_err(|e| LoaderError::io("spawning the metrics thread", e))?;
        tracing::info!(%addr, "serving /metrics");
        Ok(MetricsServer {
            addr,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the thread after `stop` was set (at most one poll period
    /// plus one connection's timeouts).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    limits: HttpLimits,
    stop: &AtomicBool,
    render: &dyn Fn() -> String,
) {
    let timeout = PollTimeout::try_from(ACCEPT_POLL).unwrap_or(PollTimeout::NONE);
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "metrics listener poll failed; stopping the server");
                return;
            }
        }
        match listener.accept() {
            Ok((conn, peer)) => {
                if let Err(e) = serve(conn, limits, render) {
                    tracing::debug!(%peer, error = %e, "metrics connection");
                }
            }
            Err(e) => tracing::debug!(error = %e, "accept"),
        }
    }
}

fn serve(
    mut conn: TcpStream,
    limits: HttpLimits,
    render: &dyn Fn() -> String,
) -> std::io::Result<()> {
    conn.set_write_timeout(Some(limits.write_timeout))?;
    let deadline = Instant::now() + limits.read_timeout;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return request_timeout(&mut conn);
        }
        conn.set_read_timeout(Some(left))?;
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return request_timeout(&mut conn);
            }
            Err(e) => return Err(e),
        };
        head.extend_from_slice(&buf[..n]);
        if head.len() > limits.max_request {
            return respond(
                &mut conn,
                431,
                "Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            );
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") | ("HEAD", "/metrics") => {
            let body = render();
            respond(&mut conn, 200, "OK", crate::metrics::CONTENT_TYPE, &body)
        }
        ("GET", "/") => respond(
            &mut conn,
            200,
            "OK",
            "text/plain",
            "probe-loader: block-request probes; metrics at /metrics\n",
        ),
        ("GET", _) | ("HEAD", _) => {
            respond(&mut conn, 404, "Not Found", "text/plain", "not found\n")
        }
        _ => respond(
            &mut conn,
            405,
            "Method Not Allowed",
            "text/plain",
            "only GET\n",
        ),
    }
}

/// 408: the request head did not arrive within the read budget.
fn request_timeout(conn: &mut TcpStream) -> std::io::Result<()> {
    respond(
        conn,
        408,
        "Request Timeout",
        "text/plain",
        "request timeout\n",
    )
}

fn respond(
    conn: &mut TcpStream,
    code: u16,
    reason: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

/// Fetches `http://addr/path` (for tests and `status`): one GET with
/// timeouts; returns the status code and body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(limits: HttpLimits) -> (MetricsServer, Arc<AtomicBool>) {
        let stop = Arc::new(AtomicBool::new(false));
        let s = MetricsServer::start(
            "127.0.0.1:0".parse().expect("addr"),
            limits,
            stop.clone(),
            || "m 1\n".to_owned(),
        )
        .expect("start");
        (s, stop)
    }

    const LIMITS: HttpLimits = HttpLimits {
        read_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_secs(2),
        max_request: 1024,
    };

    #[test]
    fn serves_metrics_and_404() {
        let (s, stop) = server(LIMITS);
        let t = Duration::from_secs(5);
        assert_eq!(
            get(s.addr(), "/metrics", t).expect("get"),
            (200, "m 1\n".to_owned())
        );
        assert_eq!(get(s.addr(), "/nope", t).expect("get").0, 404);
        stop.store(true, Ordering::Relaxed);
        s.join();
    }

    #[test]
    fn silent_and_oversized_clients_cannot_hold_it() {
        let (s, stop) = server(LIMITS);
        // A client that connects and sends nothing is cut off.
        let silent = TcpStream::connect(s.addr()).expect("connect");
        let t0 = Instant::now();
        assert_eq!(
            get(s.addr(), "/metrics", Duration::from_secs(5))
                .expect("get")
                .0,
            200
        );
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        drop(silent);
        // An endless head is refused.
        let mut big = TcpStream::connect(s.addr()).expect("connect");
        big.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = big.write_all(&[b'x'; 4096]);
        let mut resp = String::new();
        let _ = big.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
        stop.store(true, Ordering::Relaxed);
        s.join();
    }
}
