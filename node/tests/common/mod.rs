//! What the cluster tests of this crate share.
#![allow(dead_code)] // not every test binary uses every item

use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk};
use disk_io_harness::cluster::NodeCommand;
use disk_io_rpc::RemoteDisk;

/// How the harness starts a node: `disk-io-node serve`, formatting its
/// disks at their erasure positions when they have no format yet.
pub fn node_command() -> NodeCommand {
    NodeCommand::disk_io_node(env!("CARGO_BIN_EXE_disk-io-node"))
}

/// Wait until `disk` answers its id, polling, for at most `within`;
/// returns how long it took (panics, naming the disk, if it never did).
pub async fn until_ok(disk: &RemoteDisk, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match disk
            .disk_id(Deadline::after(Duration::from_millis(500)))
            .await
        {
            Ok(_) => return start.elapsed(),
            Err(_) if start.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{} not answering within {within:?}: {e:?}", disk.label()),
        }
    }
}
