//! Finding and removing what a cluster leaves on the machine: its namespaces (and the
//! processes and nftables tables inside them), its ext4 mounts, its loop devices and its
//! work directory.
//!
//! Every one of those is recognisable by name alone: namespaces are called
//! `{cluster}-hub`, `{cluster}-client`, `{cluster}-nodeN`; mounts and loop-device backing
//! files live under `{work_root}/{cluster}/`. A process-owned cluster is named
//! `{prefix}{pid}x{counter}`, so a later run can tell that its owner died (the pid is gone)
//! and sweep it ([`sweep_stale`]); a persistent (CLI) cluster, `{prefix}-{label}`, is only
//! ever removed on purpose.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::process::{start_ticks_of, NodeProcess};
use super::spec::ClusterTimeouts;
use crate::error::{io_context, Result};
use crate::loopdev::{attached_loop_devices, Ext4OnLoop, LoopDevice};
use crate::{mounts, netns};

/// What exists on this machine for one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Leftovers {
    /// The cluster's name.
    pub cluster: String,
    /// Its network namespaces.
    pub netns: Vec<String>,
    /// Processes inside them.
    pub processes: Vec<i32>,
    /// nftables tables inside them, as `namespace: family name`.
    pub nft_tables: Vec<String>,
    /// Mounts below its work directory, as `(mount point, source)`.
    pub mounts: Vec<(PathBuf, String)>,
    /// Loop devices whose backing file is below its work directory, as `(device, file)`.
    pub loop_devices: Vec<(PathBuf, PathBuf)>,
    /// Its work directory, if it exists.
    pub work_dir: Option<PathBuf>,
}

impl Leftovers {
    /// Nothing of the cluster is left.
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.processes.is_empty()
            && self.nft_tables.is_empty()
            && self.mounts.is_empty()
            && self.loop_devices.is_empty()
            && self.work_dir.is_none()
    }
}

/// The cluster a harness-made name (namespace or work directory) belongs to.
pub fn cluster_of(prefix: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix)?;
    if let Some(label_and_more) = rest.strip_prefix('-') {
        // Persistent: {prefix}-{label}[-member]
        let label = label_and_more.split('-').next()?;
        return (!label.is_empty()).then(|| format!("{prefix}-{label}"));
    }
    let id = rest.split('-').next()?;
    owner_of_id(id).map(|_| format!("{prefix}{id}"))
}

/// `pid` of a `{pid}x{counter}` id.
fn owner_of_id(id: &str) -> Option<i32> {
    let (pid, counter) = id.split_once('x')?;
    if counter.is_empty() || !counter.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|p: &i32| *p > 0)
}

/// The owning process of a process-owned cluster name; `None` for persistent ones.
pub fn owner_pid(prefix: &str, cluster: &str) -> Option<i32> {
    owner_of_id(cluster.strip_prefix(prefix)?)
}

fn pid_alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Everything of cluster `cluster` (its work directory is looked for under `work_root`).
pub fn leftovers(cluster: &str, work_root: &Path, tool_timeout: Duration) -> Result<Leftovers> {
    let work_dir = canonical_or_self(&work_root.join(cluster));
    let member_prefix = format!("{cluster}-");
    let names = netns::list(&member_prefix)?;
    let mut left = Leftovers {
        cluster: cluster.to_owned(),
        ..Leftovers::default()
    };
    for name in &names {
        let Ok(ns) = netns::Netns::open(name, tool_timeout) else {
            continue;
        };
        left.processes.extend(ns.pids().unwrap_or_default());
        if let Ok(tables) = super::power::nft_tables(&ns) {
            left.nft_tables.extend(
                tables
                    .into_iter()
                    .map(|(family, table)| format!("{name}: {family} {table}")),
            );
        }
    }
    left.netns = names;
    // Mounts and images are matched by a path component equal to the cluster's name, so
    // they are found even if the run that made them used another work root ($TMPDIR).
    let ours = |path: &Path| path.components().any(|c| c.as_os_str() == cluster);
    left.mounts = mounts::mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&work_dir) || ours(&m.mount_point))
        .map(|m| (m.mount_point, m.source))
        .collect();
    left.loop_devices = attached_loop_devices()?
        .into_iter()
        .filter(|(_, backing)| backing.starts_with(&work_dir) || ours(backing))
        .collect();
    left.work_dir = work_dir.exists().then_some(work_dir);
    Ok(left)
}

fn canonical_or_self(path: &Path) -> PathBuf {
    // The parent may be a symlink (e.g. $TMPDIR); what the kernel reports is canonical.
    match (path.parent().map(Path::canonicalize), path.file_name()) {
        (Some(Ok(parent)), Some(name)) => parent.join(name),
        _ => path.to_path_buf(),
    }
}

/// Removes everything in `left`: kills its processes, deletes its namespaces (their
/// nftables tables go with them), unmounts, detaches loop devices, removes the work
/// directory. Tries every step; returns the first error.
pub fn remove(left: &Leftovers, timeouts: &ClusterTimeouts) -> Result<()> {
    let mut first_error = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "cluster cleanup");
            first_error.get_or_insert(e);
        }
    };
    // Processes as they are now (a pid listed earlier may have exited and been reused).
    for name in &left.netns {
        let Ok(ns) = netns::Netns::open(name, timeouts.tool) else {
            continue; // deleted meanwhile, by whoever killed its processes
        };
        for pid in ns.pids().unwrap_or_default() {
            if let Some(start) = start_ticks_of(pid) {
                note(NodeProcess::adopt(pid, start).kill_and_reap(timeouts.reap, timeouts.poll));
            }
        }
    }
    for name in &left.netns {
        note(netns::delete_named(name, timeouts.tool));
    }
    // Deepest first, so nested mounts come off before their parents. Another remover (a
    // parallel sweep) may act on the same leftovers: each step checks it is still ours.
    let ours = |path: &Path| {
        path.components()
            .any(|c| c.as_os_str() == left.cluster.as_str())
    };
    let mut mounts = left.mounts.clone();
    mounts.sort_by_key(|(point, _)| std::cmp::Reverse(point.components().count()));
    for (point, source) in &mounts {
        let source = Path::new(source);
        let loop_source = source
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("loop"));
        if !loop_source {
            mounts::detach_below(point);
            continue;
        }
        match Ext4OnLoop::adopt(source, point) {
            // Still mounted there, or still backed by one of our images: ours.
            Ok(disk)
                if disk.is_mounted() || disk.loop_device().pinned_backing().is_some_and(ours) =>
            {
                note(disk.unmount());
            }
            Ok(disk) => drop(disk.persist()),
            Err(_) if !source.exists() => {}
            Err(e) => note(Err(e)),
        }
    }
    for (device, backing) in &left.loop_devices {
        // Only if it still holds the same image: the unmounts above detached theirs, and
        // a freed device number may already be someone else's.
        match LoopDevice::adopt_backed_by(device, backing) {
            Ok(Some(ours)) => note(ours.detach()),
            Ok(None) => {}
            Err(e) => note(Err(e)),
        }
    }
    if let Some(dir) = &left.work_dir {
        mounts::detach_below(dir);
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                note(Err(io_context(format!("removing {}", dir.display()), e)));
            }
            _ => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Names of clusters under `prefix` whose owning process is dead (namespaces or work
/// directories left by a crashed or killed run).
pub fn stale_clusters(prefix: &str, work_root: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = netns::list(prefix)?;
    if let Ok(entries) = fs::read_dir(work_root) {
        names.extend(
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok()),
        );
    }
    let mut stale: Vec<String> = names
        .iter()
        .filter_map(|name| cluster_of(prefix, name))
        .filter(|cluster| owner_pid(prefix, cluster).is_some_and(|pid| !pid_alive(pid)))
        .collect();
    stale.sort();
    stale.dedup();
    Ok(stale)
}

/// Removes every stale cluster (see [`stale_clusters`]); returns what was found.
pub fn sweep_stale(
    prefix: &str,
    work_root: &Path,
    timeouts: &ClusterTimeouts,
) -> Result<Vec<Leftovers>> {
    let mut removed = Vec::new();
    let mut first_error = None;
    for cluster in stale_clusters(prefix, work_root)? {
        let outcome = leftovers(&cluster, work_root, timeouts.tool).and_then(|left| {
            tracing::info!(?left, "sweeping a stale cluster");
            remove(&left, timeouts).map(|()| left)
        });
        match outcome {
            Ok(left) => removed.push(left),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(removed), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_clusters() {
        assert_eq!(
            cluster_of("dioh", "dioh42x3-node1").as_deref(),
            Some("dioh42x3")
        );
        assert_eq!(cluster_of("dioh", "dioh42x3").as_deref(), Some("dioh42x3"));
        assert_eq!(
            cluster_of("dioh", "dioh-cli-hub").as_deref(),
            Some("dioh-cli")
        );
        assert_eq!(cluster_of("dioh", "diohx-node1"), None);
        assert_eq!(cluster_of("dioh", "other42x3-node1"), None);
        assert_eq!(cluster_of("dioh", "dioh42-node1"), None);
        assert_eq!(owner_pid("dioh", "dioh42x3"), Some(42));
        assert_eq!(owner_pid("dioh", "dioh-cli"), None);
    }
}
