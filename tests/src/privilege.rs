//! Checks that fail loudly, naming what is missing, when a test lacks a privilege or device.
//!
//! Tests call these with `.expect(..)`: a fault-injection test that silently skips itself
//! would look green while testing nothing.

use std::fs::{self, OpenOptions};

use crate::cmd::find_tool;
use crate::error::{HarnessError, Result};

/// `CAP_SYS_ADMIN` bit in the capability sets.
const CAP_SYS_ADMIN: u32 = 21;

fn missing(what: impl Into<String>, hint: impl Into<String>) -> HarnessError {
    HarnessError::Privilege {
        what: what.into(),
        hint: hint.into(),
    }
}

/// `CAP_NET_ADMIN` bit: network namespaces' links, addresses and nftables.
const CAP_NET_ADMIN: u32 = 12;

/// Whether the effective capability set holds `cap`; `true` when it cannot be read (the
/// operation itself then reports the problem).
fn has_cap(cap: u32) -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << cap) != 0)
}

fn has_sys_admin() -> bool {
    has_cap(CAP_SYS_ADMIN)
}

/// Requires an effective uid of 0 with `CAP_SYS_ADMIN` (mount, loop devices).
pub fn require_root() -> Result<()> {
    require_root_for("this test mounts FUSE and ext4 file systems and attaches loop devices")
}

/// [`require_root`], with `why` in the message.
fn require_root_for(why: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(missing(
            "root (effective uid 0 with CAP_SYS_ADMIN)",
            format!("{why}; run it as root, as CI does (e.g. `sudo -E cargo test`)"),
        ));
    }
    if !has_sys_admin() {
        return Err(missing(
            "CAP_SYS_ADMIN (running as root, but without it)",
            "mounting needs CAP_SYS_ADMIN; run on the host or in a privileged container",
        ));
    }
    Ok(())
}

/// Requires root and a usable `/dev/fuse`.
pub fn require_fuse() -> Result<()> {
    require_root()?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| {
            missing(
                format!("/dev/fuse cannot be opened ({e})"),
                "this test mounts a FUSE file system; load the fuse module \
                 (`modprobe fuse`) and run as root, as CI does",
            )
        })
}

/// Requires root, `/dev/loop-control` and the `losetup` tool.
pub fn require_loop() -> Result<()> {
    require_root()?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map(drop)
        .map_err(|e| {
            missing(
                format!("/dev/loop-control cannot be opened ({e})"),
                "this test attaches loop devices; load the loop module \
                 (`modprobe loop`) and run as root, as CI does",
            )
        })?;
    if find_tool("losetup").is_none() {
        return Err(missing(
            "the `losetup` tool",
            "install util-linux (`apt-get install util-linux`)",
        ));
    }
    Ok(())
}

/// Requires everything an [`Ext4OnLoop`](crate::Ext4OnLoop) needs: loop devices and
/// `mkfs.ext4`.
pub fn require_ext4_on_loop() -> Result<()> {
    require_loop()?;
    if find_tool("mkfs.ext4").is_none() {
        return Err(missing(
            "the `mkfs.ext4` tool",
            "install e2fsprogs (`apt-get install e2fsprogs`)",
        ));
    }
    Ok(())
}

/// `CAP_PERFMON` bit (Linux 5.8+).
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` bit (Linux 5.8+).
const CAP_BPF: u32 = 39;

/// Requires what loading the block-request probes needs: `CAP_BPF` and
/// `CAP_PERFMON` (or `CAP_SYS_ADMIN`), the running kernel's BTF, and a
/// `/sys/fs/bpf` to pin maps under.
pub fn require_bpf() -> Result<()> {
    let caps = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        });
    if let Some(caps) = caps {
        let has = |c: u32| caps & (1 << c) != 0;
        if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
            return Err(missing(
                "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
                "this test loads eBPF programs on block tracepoints; run it as root, as CI does",
            ));
        }
    }
    if let Err(e) = fs::File::open("/sys/kernel/btf/vmlinux") {
        return Err(missing(
            format!("kernel BTF at /sys/kernel/btf/vmlinux ({e})"),
            "the probes derive struct offsets from the running kernel's BTF; \
             use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ));
    }
    if !std::path::Path::new("/sys/fs/bpf").is_dir() {
        return Err(missing(
            "/sys/fs/bpf",
            "maps are pinned under bpffs; sysfs must be mounted on /sys",
        ));
    }
    Ok(())
}

fn require_tool(command: &str, package: &str, why: &str) -> Result<()> {
    if find_tool(command).is_some() {
        return Ok(());
    }
    Err(missing(
        format!("the `{command}` tool ({why})"),
        format!(
            "install {package} (`apt-get install {package}`, or `cargo xtask setup`, \
             which installs it)"
        ),
    ))
}

/// Requires what creating network namespaces, bridges and veth pairs needs: root with
/// `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`, and iproute2's `ip` and `ss`.
pub fn require_netns() -> Result<()> {
    require_root_for(
        "the cluster harness creates network namespaces, nftables rules, loop devices \
         and mounts",
    )?;
    if !has_cap(CAP_NET_ADMIN) {
        return Err(missing(
            "CAP_NET_ADMIN (running as root, but without it)",
            "the cluster harness creates network namespaces, veth pairs and a bridge; \
             run on the host or in a privileged container, as CI does",
        ));
    }
    require_tool("ip", "iproute2", "network namespaces, veth pairs, bridges")?;
    require_tool("ss", "iproute2", "destroying a powered-off node's sockets")
}

/// Requires the `nft` tool (a powered-off node's namespace drops every packet through an
/// nftables table) on top of [`require_netns`].
pub fn require_nft() -> Result<()> {
    require_netns()?;
    require_tool(
        "nft",
        "nftables",
        "dropping every packet of a powered-off node",
    )
}

/// Requires everything a [`Cluster`](crate::cluster::Cluster) needs: network namespaces,
/// nftables, loop devices and `mkfs.ext4`.
pub fn require_cluster() -> Result<()> {
    require_nft()?;
    require_ext4_on_loop()
}
