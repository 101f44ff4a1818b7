//! Fault-injection harness for the `disk-io` integration tests.
//!
//! `disk-io` promises that every disk operation returns by its deadline, whatever the disk
//! does. Testing that needs disks that hang, slow down and fail on command. This machine
//! (and CI) has no device-mapper, null_blk or nbd, so the harness builds them from two
//! pieces the kernel does have:
//!
//! * [`FaultFs`]: a FUSE pass-through of a backing directory, served by threads inside the
//!   test process. Its [`FaultControl`] switches make requests hang until released, wait a
//!   fixed latency, or fail with `EIO` (by path) or `ENOSPC` (for anything that allocates).
//!   Files are opened with `FOPEN_DIRECT_IO` and attributes have a zero TTL, so no kernel
//!   cache hides a fault.
//! * [`LoopDevice`] / [`Ext4OnLoop`]: a loop device over an image file. With the image on a
//!   `FaultFs` mount, the FUSE switches become block-device faults (an O_DIRECT write on the
//!   ext4 file system stalls while the FUSE layer is hung).
//!
//! [`privilege`] checks fail loudly, naming the missing privilege, so a test never passes
//! without running; [`ScratchDir`] gives each test its own temporary directories. Every
//! fixture cleans up on drop (releasing hangs first), including when a test panics.
//!
//! Mounting needs root (CI runs these tests as root).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use disk_io_harness::{privilege, FaultFs};
//!
//! privilege::require_fuse().expect("fault-injection tests need FUSE");
//! let (_scratch, fs) = FaultFs::mount_scratch().expect("mount faultfs");
//! let file = fs.mountpoint().join("data");
//! std::fs::write(&file, b"hello").unwrap();
//!
//! let control = fs.control();
//! control.fail_eio("/data");
//! let err = std::fs::read(&file).unwrap_err();
//! assert_eq!(err.raw_os_error(), Some(libc::EIO));
//! control.clear_eio();
//!
//! control.hang();
//! let reader = std::thread::spawn(move || std::fs::read(file));
//! assert!(control.wait_for_hung(1, Duration::from_secs(5)));
//! control.release();
//! assert_eq!(reader.join().unwrap().unwrap(), b"hello");
//! ```
//!
//! Declare fixtures in dependency order (`FaultFs`, then an `Ext4OnLoop` whose image lives
//! on it) so they drop in reverse: the ext4 file system and loop device go first.
//!
//! # The cluster harness
//!
//! Remote-disk, erasure, lock and S3 tests need several storage nodes and a node that
//! loses power. [`cluster::Cluster`] starts N node processes (any program: the caller gives
//! a [`NodeCommand`]), each in its own network namespace ([`netns`]) joined to a bridge in a
//! harness-owned hub namespace, each with M ext4-on-loop disks and a shared TOML config
//! file ([`cluster::ClusterConfig`]). `poweroff` makes a node's namespace drop every packet
//! (nftables) and stops its process; `poweron` kills it under the drop and starts it
//! afresh. Test traffic never leaves the harness' namespaces, and a dropped (or panicking)
//! cluster removes every namespace, table, mount, loop device and file it made. The
//! `disk-io-cluster` binary (and `cargo xtask cluster`) drives the same harness from the
//! command line; `disk-io-echo-node` is a stand-in node program.

pub mod cluster;
mod cmd;
pub mod dashboard;
mod error;
pub mod faultfs;
pub mod history;
pub mod ledger;
pub mod loopdev;
pub mod mounts;
pub mod netns;
pub mod privilege;
pub mod scratch;

pub use cluster::{Cluster, ClusterSpec, NodeCommand};
pub use error::{HarnessError, Result};
pub use faultfs::{FaultControl, FaultFs};
pub use ledger::Ledger;
pub use loopdev::{Ext4OnLoop, LoopDevice};
pub use netns::Netns;
pub use scratch::ScratchDir;
