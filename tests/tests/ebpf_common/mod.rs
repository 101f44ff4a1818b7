//! Fixtures shared by the eBPF integration tests (`tests/ebpf_*.rs`):
//! a loader with its own pin directory, traced devices limited to the
//! test's own loop device (so parallel tests do not see each other's I/O),
//! and promtool.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use disk_io_harness::{privilege, Ext4OnLoop, FaultControl, FaultFs, LoopDevice, ScratchDir};
use probes_ebpf_loader::{Loader, ProbeConfig, RunConfig};

/// Bound for any single wait in these tests (a loaded 2-core machine).
pub const BOUND: Duration = Duration::from_secs(20);

pub fn need_bpf() {
    privilege::require_root().expect("this test loads eBPF programs");
    privilege::require_bpf().expect("this test loads eBPF programs");
}

/// A pin directory no other test (or a production loader) uses.
pub fn unique_pin_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    PathBuf::from(format!(
        "/sys/fs/bpf/disk-io-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Starts a loader tracing only `device`, serving /metrics on a free port.
pub fn start_loader(device: &str, threshold: Duration, interval: Duration) -> Loader {
    let cfg = RunConfig {
        probes: ProbeConfig {
            pin_dir: unique_pin_dir(),
            devices: vec![device.to_owned()],
            ..ProbeConfig::default()
        },
        stall_threshold: threshold,
        scan_interval: interval,
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..RunConfig::default()
    };
    Loader::start(cfg).expect("start the probe loader")
}

/// GET /metrics from the loader.
pub fn scrape(loader: &Loader) -> String {
    let addr = loader.metrics_addr().expect("metrics address");
    let (code, body) = probes_ebpf_loader::http::get(addr, "/metrics", Duration::from_secs(5))
        .expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// Runs `promtool ARGS` (feeding `stdin`, if any) within [`BOUND`];
/// `Ok(stdout)` on success, `Err` with promtool's output otherwise.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .ok_or(
            "promtool not found: install the Debian package `prometheus` (cargo xtask setup does)",
        )?;
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting promtool: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to promtool: {e}"))?;
    }
    let deadline = Instant::now() + BOUND;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return Err(format!("promtool {args:?} did not finish within {BOUND:?}"));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "promtool {args:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `promtool check metrics` on `text`; `Err` with promtool's output.
pub fn promtool_check(text: &str) -> Result<(), String> {
    promtool(&["check", "metrics"], Some(text)).map(drop)
}

/// Series names and their label names in a Prometheus text exposition
/// (`_bucket`/`_sum`/`_count` samples count under their own names).
pub fn exposed_series(text: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut out: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if let Some(rest) = line[name_end..].strip_prefix('{') {
            let body = rest.rsplit_once('}').map_or(rest, |(b, _)| b);
            // Label values are quoted and may hold commas: take the names
            // before each `="`.
            for part in body.split("\",") {
                if let Some((k, _)) = part.split_once("=\"") {
                    labels.insert(k.trim_start_matches(',').to_owned());
                }
            }
        }
    }
    out
}

/// A loader tracing its own loop device. Fields drop in declaration order:
/// the loader, then the device, then its image's directory.
pub struct TracedLoop {
    /// The loader (serving /metrics on a free port).
    pub loader: Loader,
    /// The traced device.
    pub lo: LoopDevice,
    _scratch: ScratchDir,
}

/// A loop device of 16 MiB on a scratch image, with `n` O_DIRECT 4 KiB
/// writes and reads done through it, traced by a fresh loader that has
/// seen the reads.
pub fn loader_with_io(n: u64) -> TracedLoop {
    use std::os::unix::fs::FileExt;
    need_bpf();
    privilege::require_loop().expect("this test attaches a loop device");
    let scratch = ScratchDir::new().expect("scratch");
    let image = scratch.path().join("metrics.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .expect("image");
    let lo = LoopDevice::attach(&image, true).expect("loop device");
    let dev = dev_name(lo.path());
    let loader = start_loader(&dev, Duration::from_secs(1), Duration::from_millis(50));
    let file = open_direct(lo.path(), false);
    for i in 0..n {
        file.write_at(&Block([i as u8; 4096]).0, i * 4096)
            .expect("O_DIRECT write");
        let mut b = Block([0; 4096]);
        file.read_at(&mut b.0, i * 4096).expect("O_DIRECT read");
    }
    drop(file);
    let series =
        format!("diskio_block_request_duration_seconds_count{{device=\"{dev}\",op=\"read\"}}");
    let deadline = Instant::now() + BOUND;
    loop {
        let text = scrape(&loader);
        if metric(&text, &series).unwrap_or(0.0) >= n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "reads never showed up:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    TracedLoop {
        loader,
        lo,
        _scratch: scratch,
    }
}

/// The value of the series `name{labels}` (exact label text) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Device name of a loop device path (`/dev/loop3` → `loop3`).
pub fn dev_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .expect("device name")
}

/// A 4 KiB-aligned 4 KiB buffer for O_DIRECT.
#[repr(C, align(4096))]
pub struct Block(pub [u8; 4096]);

/// Opens `path` with O_DIRECT for reading and writing.
pub fn open_direct(path: &std::path::Path, create: bool) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} with O_DIRECT: {e}", path.display()))
}

/// An ext4 file system on a loop device whose image lives on a FaultFs
/// mount: hang the FUSE layer and the loop device's requests stall. Fields
/// drop in declaration order: ext4 and its loop device first, then the
/// mount, then the directories.
pub struct StallableDisk {
    /// The file system (its `Drop` releases any hang before unmounting).
    pub ext4: Ext4OnLoop,
    /// Switches of the FUSE layer under the loop device.
    pub ctl: FaultControl,
    /// The loop device's name (`loopN`).
    pub dev: String,
    _fs: FaultFs,
    _scratch: ScratchDir,
}

/// A 64 MiB [`StallableDisk`]; fails loudly without root, FUSE or loop
/// devices.
pub fn stallable_disk() -> StallableDisk {
    need_bpf();
    privilege::require_fuse().expect("this test mounts FUSE");
    privilege::require_ext4_on_loop().expect("this test attaches a loop device");
    let (scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
    let ctl = fs.control();
    let ext4 = Ext4OnLoop::over_faultfs(&fs, &scratch, 64 << 20).expect("ext4 on loop on faultfs");
    let dev = dev_name(ext4.loop_device().path());
    StallableDisk {
        ext4,
        ctl,
        dev,
        _fs: fs,
        _scratch: scratch,
    }
}
