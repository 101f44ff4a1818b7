//! A bounded, seeded run of the fuzz targets' bodies on stable (the
//! cargo-fuzz targets in `rpc/fuzz/` run the same code for longer, on
//! nightly): random and mutated messages decode to values or typed errors;
//! hostile paths through the server's handlers get typed errors and touch
//! nothing outside the disk.

use std::sync::Arc;

use disk_io::{Disk, DiskError};
use disk_io_rpc::fuzzing;
use disk_io_rpc::proto::{PathRequest, WireError};
use disk_io_rpc::{RpcConfig, RpcServer};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;
use common::{dl, temp_disk, SECRET};

#[test]
fn decoding_random_and_mutated_messages_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let seeds: Vec<Vec<u8>> = vec![
        PathRequest {
            disk: 1,
            vol: "v".into(),
            path: "a/b".into(),
        }
        .encode_to_vec(),
        WireError {
            kind: "not_durable".into(),
            cause: WireError {
                kind: "io".into(),
                errno: 5,
                ..WireError::default()
            }
            .encode_to_vec(),
            ..WireError::default()
        }
        .encode_to_vec(),
    ];
    for i in 0..20_000 {
        let data: Vec<u8> = if i % 2 == 0 {
            let n = rng.random_range(0..256);
            (0..n).map(|_| rng.random()).collect()
        } else {
            let mut d = seeds[i % seeds.len()].clone();
            for _ in 0..rng.random_range(1..4) {
                if d.is_empty() {
                    break;
                }
                let at = rng.random_range(0..d.len());
                d[at] = rng.random();
            }
            d
        };
        fuzzing::decode_all(&data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_through_the_server_get_typed_errors_and_stay_inside() {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret"), b"keep").expect("sentinel");
    let (dir, disk) = temp_disk().await;
    disk.make_vol("v", dl()).await.unwrap();
    disk.write_all("v", "a/file", b"x", dl()).await.unwrap();
    // A symlink planted on the disk, pointing outside.
    std::os::unix::fs::symlink(outside.path(), dir.path().join("v/link")).expect("symlink");
    let server = RpcServer::new(
        vec![Arc::new(disk) as Arc<dyn Disk>],
        SECRET,
        RpcConfig::default(),
    )
    .unwrap();
    let outside_name = outside.path().display().to_string();
    let parts: Vec<String> = vec![
        "..".into(),
        ".".into(),
        "".into(),
        "a".into(),
        "file".into(),
        "link".into(),
        "secret".into(),
        "\0".into(),
        "x".repeat(300),
        outside_name.clone(),
        ".disk-io".into(),
    ];
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..1_500 {
        let n = rng.random_range(0..5);
        let path: Vec<&str> = (0..n)
            .map(|_| parts[rng.random_range(0..parts.len())].as_str())
            .collect();
        let vol = ["v", "..", "", ".disk-io", "v/..", "nope"][rng.random_range(0..6)];
        let mut data = vol.as_bytes().to_vec();
        data.push(0xff);
        data.extend_from_slice(path.join("/").as_bytes());
        for e in fuzzing::path_requests(&server, SECRET, &data).await {
            assert!(
                !matches!(e, DiskError::Rejected { .. } | DiskError::Busy { .. }),
                "a signed request was refused: {e:?}"
            );
        }
    }
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"keep"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
}
