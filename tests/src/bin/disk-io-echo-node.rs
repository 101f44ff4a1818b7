//! `disk-io-echo-node`: a tiny stand-in storage node for the cluster harness' self-tests
//! and for `cargo xtask cluster up` until `disk-io-node` exists.
//!
//! It listens on one TCP address and answers a line protocol, one reply line per request:
//!
//! | request                 | reply                                  |
//! |-------------------------|----------------------------------------|
//! | `PING`                  | `PONG <node> <pid> <peer address>`     |
//! | `ECHO <text>`           | `<text>`                               |
//! | `PUT <disk> <key> <v>`  | `OK` (v written durably to disk `<disk>`, 1-based) |
//! | `GET <disk> <key>`      | `VALUE <v>` or `ERR not found`         |
//! | `QUIT`                  | closes the connection                  |
//!
//! Keys are `[A-Za-z0-9._-]`, not starting with a dot; anything else, unknown commands and
//! over-long lines get `ERR ...` and never stop the server. Connections are bounded
//! (`--max-conns`; one over the bound is told `ERR busy` and closed), and so are line
//! length and idle time.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;

/// Stand-in storage node: a TCP line-protocol server over a node's disks.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Node name (answered by PING).
    #[arg(long, env = "DISKIO_NODE")]
    node: String,
    /// Address to listen on.
    #[arg(long, env = "DISKIO_RPC_ADDR")]
    listen: SocketAddr,
    /// The node's disk directories, comma-separated.
    #[arg(long, env = "DISKIO_DISKS", value_delimiter = ',')]
    disks: Vec<PathBuf>,
    /// Most simultaneous connections.
    #[arg(long, default_value_t = 64)]
    max_conns: usize,
    /// Longest request line, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_line: u64,
    /// A connection idle this long is closed.
    #[arg(long, default_value_t = 300)]
    idle_timeout_secs: u64,
}

struct Server {
    args: Args,
    open: AtomicUsize,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)?;
    println!(
        "{} (pid {}) listening on {} with {} disks",
        args.node,
        std::process::id(),
        args.listen,
        args.disks.len()
    );
    let server = Arc::new(Server {
        args,
        open: AtomicUsize::new(0),
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if server.open.fetch_add(1, Ordering::SeqCst) >= server.args.max_conns {
            server.open.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = stream.write_all(b"ERR busy\n");
            continue;
        }
        let spawned = thread::Builder::new().spawn({
            let server = Arc::clone(&server);
            move || {
                if let Err(e) = serve(&server, stream) {
                    eprintln!("connection: {e}");
                }
                server.open.fetch_sub(1, Ordering::SeqCst);
            }
        });
        if spawned.is_err() {
            server.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

fn serve(server: &Server, stream: TcpStream) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(server.args.idle_timeout_secs)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let read = (&mut reader)
            .take(server.args.max_line + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            // Over-long (or cut off by EOF): refuse it and drop the connection.
            writer.write_all(b"ERR line too long or unterminated\n")?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let request = text.trim_end_matches(['\r', '\n']);
        let Some(reply) = answer(server, peer, request) else {
            return Ok(());
        };
        writer.write_all(reply.as_bytes())?;
        writer.write_all(b"\n")?;
    }
}

/// The reply to one request; `None` closes the connection.
fn answer(server: &Server, peer: SocketAddr, request: &str) -> Option<String> {
    let (command, rest) = request.split_once(' ').unwrap_or((request, ""));
    Some(match command {
        "PING" => format!("PONG {} {} {peer}", server.args.node, std::process::id()),
        "ECHO" => rest.to_owned(),
        "PUT" => {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(disk), Some(key), Some(value)) => match file_of(server, disk, key) {
                    Ok(path) => match write_durably(&path, value.as_bytes()) {
                        Ok(()) => "OK".to_owned(),
                        Err(e) => format!("ERR {e}"),
                    },
                    Err(e) => format!("ERR {e}"),
                },
                _ => "ERR usage: PUT <disk> <key> <value>".to_owned(),
            }
        }
        "GET" => {
            let mut parts = rest.splitn(2, ' ');
            match (parts.next(), parts.next()) {
                (Some(disk), Some(key)) => match file_of(server, disk, key) {
                    Ok(path) => match fs::read(&path) {
                        Ok(bytes) => format!("VALUE {}", String::from_utf8_lossy(&bytes)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => "ERR not found".to_owned(),
                        Err(e) => format!("ERR {e}"),
                    },
                    Err(e) => format!("ERR {e}"),
                },
                _ => "ERR usage: GET <disk> <key>".to_owned(),
            }
        }
        "QUIT" => return None,
        _ => "ERR unknown command".to_owned(),
    })
}

fn file_of(server: &Server, disk: &str, key: &str) -> Result<PathBuf, String> {
    let index: usize = disk.parse().map_err(|_| format!("bad disk {disk:?}"))?;
    let dir = index
        .checked_sub(1)
        .and_then(|i| server.args.disks.get(i))
        .ok_or_else(|| format!("no disk {index}"))?;
    let ok = !key.is_empty()
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(format!("bad key {key:?}"));
    }
    Ok(dir.join(key))
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename, then fsyncs the
/// directory: after `OK` the value survives the process being killed.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
