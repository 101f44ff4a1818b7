//! The shipped Prometheus alert rules parse (`promtool check rules`) and
//! only name series this project exports.

use std::path::Path;
use std::process::Command;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/disk-io-alerts.yml"
);

#[test]
fn alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules", RULES])
        .output()
        .expect("promtool (Debian package prometheus, installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_use_only_exported_series() {
    let rules = std::fs::read_to_string(RULES).expect("read rules");
    let exported = [
        disk_io::metrics::STATE,
        disk_io::metrics::STATE_CHECK_TIMEOUTS,
        disk_io::metrics::DEADLINE_MISSES,
        disk_io::metrics::ZOMBIES,
        "diskio_block_stalled",
        "diskio_block_request_errors_total",
    ];
    let loader_src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../probes-ebpf/loader/src/metrics.rs"),
    )
    .expect("read the loader's metrics source");
    for name in exported.iter().filter(|n| n.starts_with("diskio_block_")) {
        assert!(loader_src.contains(name), "loader does not export {name}");
    }
    let used: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("diskio_"))
        .collect();
    assert!(!used.is_empty());
    for w in used {
        assert!(
            exported.contains(&w),
            "rules name {w}, which nothing exports"
        );
    }
}
