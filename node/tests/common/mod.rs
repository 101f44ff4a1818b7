//! What the cluster tests of this crate share.

use std::time::{Duration, Instant};

use disk_io::{Deadline, Disk};
use disk_io_rpc::RemoteDisk;

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
