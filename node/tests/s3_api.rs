//! The S3 API through Debian's awscli against every node of a 4 × 4
//! cluster of full nodes: buckets, `s3 cp` (single and multipart), `ls`,
//! `head-object`, ranged `get-object`, listing with prefixes and
//! delimiters, deletes, refused keys; the ops endpoints; the dashboard's
//! node series on a live `/metrics`.
//!
//! Needs root, network namespaces, nftables, loop devices and awscli;
//! without them the test fails naming what is missing.

use std::time::Duration;

mod s3_common;
use s3_common::*;

const T: Duration = Duration::from_secs(120);

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn awscli_works_against_every_node_and_wrong_keys_are_refused() {
    let s = S3Cluster::start(256 << 20);
    let dir = scratch();
    let small = dir.path().join("small.bin");
    let small_sum = random_file(&small, 100_000, 1);
    let big = dir.path().join("big.bin");
    let big_sum = random_file(&big, 40 << 20, 2);

    ok(s.aws("node1", &["s3", "mb", "s3://api"], T), "mb");
    let again = s.aws("node2", &["s3", "mb", "s3://api"], T);
    assert!(
        !again.status.success(),
        "a second mb of the same bucket succeeded"
    );
    let ls = ok(s.aws("node3", &["s3", "ls"], T), "ls buckets");
    assert!(ls.contains("api"), "bucket list: {ls}");
    assert!(
        !ls.contains("disk-io-"),
        "reserved buckets are listed: {ls}"
    );

    for (i, node) in ["node1", "node2", "node3", "node4"].iter().enumerate() {
        // Single PUT (below awscli's 8 MiB multipart threshold) and a
        // multipart upload of 40 MiB (5 parts of 8 MiB).
        let k_small = format!("dir{i}/small.bin");
        let k_big = format!("dir{i}/sub/big.bin");
        ok(
            s.aws(
                node,
                &[
                    "s3",
                    "cp",
                    small.to_str().unwrap(),
                    &format!("s3://api/{k_small}"),
                ],
                T,
            ),
            "cp small",
        );
        ok(
            s.aws(
                node,
                &[
                    "s3",
                    "cp",
                    big.to_str().unwrap(),
                    &format!("s3://api/{k_big}"),
                ],
                T,
            ),
            "cp big",
        );
        // Read back through the next node.
        let other = ["node2", "node3", "node4", "node1"][i];
        for (k, want) in [(&k_small, &small_sum), (&k_big, &big_sum)] {
            let got = dir.path().join("got.bin");
            ok(
                s.aws(
                    other,
                    &["s3", "cp", &format!("s3://api/{k}"), got.to_str().unwrap()],
                    T,
                ),
                "cp down",
            );
            assert_eq!(&sha256_file(&got), want, "{k} read back through {other}");
        }
        let head = ok(
            s.aws(
                other,
                &["s3api", "head-object", "--bucket", "api", "--key", &k_big],
                T,
            ),
            "head-object",
        );
        let v: serde_json::Value = serde_json::from_str(&head).expect("head-object JSON");
        assert_eq!(v["ContentLength"].as_u64(), Some(40 << 20), "{head}");
        assert!(
            v["ETag"].as_str().unwrap_or("").ends_with("-5\""),
            "multipart ETag: {head}"
        );
        let head = ok(
            s.aws(
                other,
                &["s3api", "head-object", "--bucket", "api", "--key", &k_small],
                T,
            ),
            "head-object small",
        );
        let v: serde_json::Value = serde_json::from_str(&head).expect("head-object JSON");
        let md5 = {
            use md5::Digest;
            hex::encode(md5::Md5::digest(std::fs::read(&small).unwrap()))
        };
        assert_eq!(
            v["ETag"].as_str(),
            Some(format!("\"{md5}\"").as_str()),
            "single-PUT ETag is the MD5"
        );
        // Ranged GETs: inside one part, across parts, a suffix.
        let bytes = std::fs::read(&big).unwrap();
        for (range, lo, hi) in [
            ("bytes=100-1099", 100usize, 1100usize),
            ("bytes=8388000-8390000", 8_388_000, 8_390_001),
            ("bytes=-5000", bytes.len() - 5000, bytes.len()),
        ] {
            let got = dir.path().join("range.bin");
            ok(
                s.aws(
                    other,
                    &[
                        "s3api",
                        "get-object",
                        "--bucket",
                        "api",
                        "--key",
                        &k_big,
                        "--range",
                        range,
                        got.to_str().unwrap(),
                    ],
                    T,
                ),
                "ranged get-object",
            );
            assert_eq!(
                std::fs::read(&got).unwrap(),
                &bytes[lo..hi],
                "range {range}"
            );
        }
    }

    // Listing: recursive, with a prefix, with the delimiter (common prefixes).
    let all = ok(
        s.aws("node2", &["s3", "ls", "--recursive", "s3://api/"], T),
        "ls recursive",
    );
    assert_eq!(all.lines().count(), 8, "{all}");
    let top = ok(
        s.aws(
            "node1",
            &[
                "s3api",
                "list-objects-v2",
                "--bucket",
                "api",
                "--delimiter",
                "/",
            ],
            T,
        ),
        "list-objects-v2 delimiter",
    );
    let v: serde_json::Value = serde_json::from_str(&top).unwrap();
    let prefixes: Vec<&str> = v["CommonPrefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["dir0/", "dir1/", "dir2/", "dir3/"], "{top}");
    let sub = ok(
        s.aws(
            "node3",
            &[
                "s3api",
                "list-objects-v2",
                "--bucket",
                "api",
                "--prefix",
                "dir1/",
                "--delimiter",
                "/",
            ],
            T,
        ),
        "list-objects-v2 prefix",
    );
    let v: serde_json::Value = serde_json::from_str(&sub).unwrap();
    assert_eq!(v["Contents"][0]["Key"], "dir1/small.bin", "{sub}");
    assert_eq!(v["CommonPrefixes"][0]["Prefix"], "dir1/sub/", "{sub}");
    // Paging: one key per page walks all eight.
    let paged = ok(
        s.aws(
            "node4",
            &[
                "s3api",
                "list-objects-v2",
                "--bucket",
                "api",
                "--page-size",
                "1",
            ],
            T,
        ),
        "paged listing",
    );
    let v: serde_json::Value = serde_json::from_str(&paged).unwrap();
    assert_eq!(v["Contents"].as_array().map(Vec::len), Some(8), "{paged}");

    // Wrong keys are refused, on every node.
    for node in ["node1", "node2", "node3", "node4"] {
        let out = s.aws_as(
            node,
            ACCESS_KEY,
            "not-the-secret-key-000",
            &["s3", "ls", "s3://api/"],
        );
        assert!(!out.status.success(), "a wrong secret was let in on {node}");
        let out = s.aws_as(node, "nobody", "nobody-secret-key-000", &["s3", "ls"]);
        assert!(!out.status.success(), "an unknown key was let in on {node}");
    }

    // Deletes; a bucket with objects is not deleted.
    let rb = s.aws("node1", &["s3", "rb", "s3://api"], T);
    assert!(!rb.status.success(), "a bucket with objects was deleted");
    ok(
        s.aws("node2", &["s3", "rm", "--recursive", "s3://api/"], T),
        "rm recursive",
    );
    let left = s.aws("node3", &["s3", "ls", "--recursive", "s3://api/"], T);
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "{}",
        text(&left)
    );
    ok(s.aws("node4", &["s3", "rb", "s3://api"], T), "rb");

    // Ops endpoints and the cluster view.
    for node in ["node1", "node2", "node3", "node4"] {
        assert_eq!(s.http_get(node, "/health/live").0, 200);
        assert_eq!(s.http_get(node, "/health/ready").0, 200);
    }
    let (code, metrics) = s.http_get("node1", "/metrics");
    assert_eq!(code, 200);
    // Every node-only series the shipped Grafana dashboard queries is on a
    // live node's /metrics (the harness's dashboard test checks the rest).
    let dashboard = disk_io_harness::dashboard::Dashboard::shipped().expect("the dashboard");
    let wanted = disk_io_harness::dashboard::node_only_series(&dashboard);
    assert!(!wanted.is_empty(), "the dashboard queries no node series");
    for series in &wanted {
        assert!(
            metrics.lines().any(
                |l| l.starts_with(series.as_str()) && l[series.len()..].starts_with([' ', '{'])
            ),
            "{series} (queried by the dashboard) is not on node1's /metrics"
        );
    }
    let status = ok(s.admin(&["status"]), "admin status");
    assert!(status.contains("set 0: 8/8 disks online"), "{status}");
    assert!(status.contains("set 1: 8/8 disks online"), "{status}");
    s.c.shutdown().expect("cluster cleanup");
}
