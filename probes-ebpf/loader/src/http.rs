//! `/metrics` over HTTP/1.1, served by hyper on a current-thread tokio
//! runtime of its own thread.
//!
//! Every accepted connection is served on its own task, so a client that
//! connects and sends nothing, or trickles its request head a byte at a
//! time, holds one connection slot and delays nobody. The bounds come from
//! [`HttpConfig`]: at most `max_connections` at once (beyond it a new
//! connection is closed at once), the request head within `header_timeout`
//! (hyper's header-read timer), the whole exchange within
//! `connection_timeout`, a head of at most `max_request_head` bytes (431
//! beyond). Keep-alive is off: each connection serves one request, so an
//! idle keep-alive connection cannot outlive its exchange either.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};

use crate::config::HttpConfig;
use crate::error::{LoaderError, Result};

type Render = dyn Fn() -> String + Send + Sync;

/// A running server. [`MetricsServer::stop`] (or drop) stops it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `render()` at `/metrics` until stopped.
    pub fn start(
        addr: SocketAddr,
        cfg: HttpConfig,
        render: impl Fn() -> String + Send + Sync + 'static,
    ) -> Result<MetricsServer> {
        cfg.validate()?;
        let listen_err = |source| LoaderError::Listen {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(listen_err)?;
        let bound = listener.local_addr().map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| LoaderError::io("starting the metrics runtime", e))?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let render: Arc<Render> = Arc::new(render);
        let thread = std::thread::Builder::new()
            .name("probe-metrics".into())
            .spawn(move || {
                runtime.block_on(accept_loop(listener, cfg, render, stop_rx));
                // Connections still open are dropped, bounded.
                runtime.shutdown_timeout(cfg.shutdown_timeout);
            })
            .map_err(|e| LoaderError::io("spawning the metrics thread", e))?;
        tracing::info!(addr = %bound, "serving /metrics");
        Ok(MetricsServer {
            addr: bound,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drops open connections (waiting at most
    /// [`HttpConfig::shutdown_timeout`]) and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    cfg: HttpConfig,
    render: Arc<Render>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener unusable; not serving /metrics");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "accept");
                tokio::time::sleep(cfg.accept_backoff).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, cap = cfg.max_connections, "metrics connection cap reached; closing");
            drop(stream);
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(&req, render.as_ref());
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(cfg.header_timeout)
                .max_header_size(cfg.max_request_head)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(cfg.connection_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
            }
        });
    }
}

fn response(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

fn respond(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match (get, req.uri().path()) {
        (true, "/metrics") => response(StatusCode::OK, crate::metrics::CONTENT_TYPE, render()),
        (true, "/") => response(
            StatusCode::OK,
            TEXT,
            "probe-loader: block-request probes; metrics at /metrics\n".into(),
        ),
        (true, _) => response(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        (false, _) => response(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n".into(),
        ),
    }
}

/// Fetches `http://addr/path` (for tests and scripts): one GET, the whole
/// exchange within `timeout`; returns the status code and body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};
    let other = |e: hyper::Error| Error::other(e);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    runtime.block_on(async {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(other)?;
            tokio::spawn(conn);
            let mut req = Request::new(Empty::<Bytes>::new());
            *req.uri_mut() = path
                .parse()
                .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
            req.headers_mut().insert(
                HOST,
                HeaderValue::from_str(&addr.to_string())
                    .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?,
            );
            let resp = sender.send_request(req).await.map_err(other)?;
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(other)?.to_bytes();
            Ok((code, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::TimedOut,
                    format!("GET http://{addr}{path}: no answer within {timeout:?}"),
                ))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    fn server(cfg: HttpConfig) -> MetricsServer {
        MetricsServer::start("127.0.0.1:0".parse().expect("addr"), cfg, || {
            "m 1\n".to_owned()
        })
        .expect("start")
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn serves_metrics_404_and_405() {
        let s = server(HttpConfig::default());
        assert_eq!(
            get(s.addr(), "/metrics", T).expect("get"),
            (200, "m 1\n".to_owned())
        );
        assert_eq!(get(s.addr(), "/nope", T).expect("get").0, 404);
        let mut c = TcpStream::connect(s.addr()).expect("connect");
        c.set_read_timeout(Some(T)).expect("timeout");
        c.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .expect("write");
        let mut resp = String::new();
        let _ = c.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
        s.stop();
    }

    /// Idle and slow-loris clients hold connections; a scrape still answers
    /// at once (the old one-connection-at-a-time server made it wait out
    /// each client's 5 s read timeout in turn).
    #[test]
    fn idle_and_slow_clients_do_not_delay_a_scrape() {
        let cfg = HttpConfig::default();
        let s = server(cfg);
        let idle: Vec<TcpStream> = (0..8)
            .map(|_| TcpStream::connect(s.addr()).expect("connect idle"))
            .collect();
        let mut loris = TcpStream::connect(s.addr()).expect("connect loris");
        loris
            .write_all(b"GET /metrics HTTP/1.1\r\nHo")
            .expect("write");
        let addr = s.addr();
        let trickle = std::thread::spawn(move || {
            for b in b"st: x\r\nX-Slow: yes" {
                if loris.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            loris
        });
        // Give the server time to accept them all first.
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..3 {
            let t0 = Instant::now();
            let (code, body) = get(addr, "/metrics", T).expect("scrape");
            let took = t0.elapsed();
            assert_eq!((code, body.as_str()), (200, "m 1\n"));
            assert!(
                took < Duration::from_secs(1),
                "scrape took {took:?} with 8 idle and 1 slow client"
            );
        }
        drop(idle);
        drop(trickle.join().expect("trickle"));
        s.stop();
    }

    #[test]
    fn silent_clients_are_cut_off_and_oversized_heads_refused() {
        let cfg = HttpConfig {
            header_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        };
        let s = server(cfg);
        let mut silent = TcpStream::connect(s.addr()).expect("connect");
        silent.set_read_timeout(Some(T)).expect("timeout");
        let t0 = Instant::now();
        let mut buf = Vec::new();
        let _ = silent.read_to_end(&mut buf);
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "silent client kept {:?}",
            t0.elapsed()
        );
        let mut big = TcpStream::connect(s.addr()).expect("connect");
        big.set_read_timeout(Some(T)).expect("timeout");
        let mut head = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'x', 2 * cfg.max_request_head));
        let _ = big.write_all(&head);
        let mut resp = String::new();
        let _ = big.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
        s.stop();
    }

    #[test]
    fn beyond_the_cap_connections_are_closed_and_the_server_recovers() {
        let cfg = HttpConfig {
            max_connections: 2,
            header_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        };
        let s = server(cfg);
        let held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(s.addr()).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // Over the cap: closed at once, never hangs.
        let t0 = Instant::now();
        let r = get(s.addr(), "/metrics", T);
        assert!(r.is_err(), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        // The held ones are cut at the header timeout; then it serves.
        let deadline = Instant::now() + T;
        loop {
            if let Ok((200, _)) = get(s.addr(), "/metrics", T) {
                break;
            }
            assert!(Instant::now() < deadline, "never recovered from the cap");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(held);
        s.stop();
    }
}
