//! The CLI's JSON contract: one object, `ok` and `elapsed_us` always,
//! `error_kind` on failure.

use std::process::Command;

fn diskctl(args: &[&str]) -> (serde_json::Value, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_diskctl"))
        .args(args)
        .output()
        .expect("run diskctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text:?}"));
    assert!(v["ok"].is_boolean(), "{v}");
    assert!(v["elapsed_us"].is_u64(), "{v}");
    (v, out.status.success())
}

#[test]
fn format_id_info_probe() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().to_str().expect("utf8");
    let (v, ok) = diskctl(&["id", dir, "--json", "--deadline", "2s"]);
    assert!(!ok);
    assert_eq!(v["error_kind"], "unformatted");
    let (v, ok) = diskctl(&["format", dir, "--set", "2", "--index", "7", "--json"]);
    assert!(ok, "{v}");
    let uuid = v["disk_id"]["uuid"].as_str().expect("uuid").to_string();
    let (v, _) = diskctl(&["format", dir, "--json"]);
    assert_eq!(v["error_kind"], "already_formatted");
    let (v, ok) = diskctl(&["id", dir, "--json", "--deadline", "500ms"]);
    assert!(ok, "{v}");
    assert_eq!(v["disk_id"]["uuid"], uuid.as_str());
    assert_eq!(v["disk_id"]["set_index"], 2);
    let (v, ok) = diskctl(&["info", dir, "--json"]);
    assert!(ok, "{v}");
    assert!(v["info"]["total"].as_u64().expect("total") > 0);
    assert_eq!(v["info"]["state"], "online");
    let (v, ok) = diskctl(&["probe", dir, "--json", "--deadline", "2s"]);
    assert!(ok, "{v}");
    assert!(v["probe_us"].is_u64());
}

#[test]
fn missing_disk_is_a_typed_error() {
    let (v, ok) = diskctl(&["info", "/nonexistent/disk-io-nowhere", "--json"]);
    assert!(!ok);
    assert_eq!(v["error_kind"], "disk_not_found");
    assert_eq!(v["unavailable"], true);
}
