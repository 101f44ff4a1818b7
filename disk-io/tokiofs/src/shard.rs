//! [`TokioShardWriter`]: appends to a shard file, buffered through
//! `tokio::fs::File`, or O_DIRECT through an aligned staging buffer written
//! with `pwrite` on the blocking pool (`tokio::fs::File`'s own buffer is not
//! aligned, so it cannot write an O_DIRECT file).

use std::fs::File;
use std::sync::Arc;

use async_trait::async_trait;
use disk_io_api::{Deadline, DiskError, OpClass, Result, ShardWriter};
use tokio::io::AsyncWriteExt;

use crate::sys;
use crate::Inner;

/// Close a regular file on the blocking pool (a close can block, e.g.
/// FUSE's FLUSH), never on the runtime worker that lets go of it.
pub(crate) fn close_off_worker(file: File) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(file));
        }
        Err(_) => drop(file),
    }
}

/// An aligned staging buffer, in safe code: a byte vector `align` bytes
/// longer than needed, used from the first aligned address in it. The
/// vector never grows, so its data never moves.
pub(crate) struct Staging {
    buf: Vec<u8>,
    start: usize,
    cap: usize,
    len: usize,
}

impl Staging {
    /// `cap` bytes aligned to `align` (a power of two), or `None` when that
    /// cannot be had.
    pub(crate) fn new(cap: usize, align: usize) -> Option<Staging> {
        if align == 0 || !align.is_power_of_two() {
            return None;
        }
        let buf = vec![0u8; cap.checked_add(align)?];
        let start = buf.as_ptr().align_offset(align);
        if start >= align {
            return None;
        }
        Some(Staging {
            buf,
            start,
            cap,
            len: 0,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn remaining(&self) -> usize {
        self.cap - self.len
    }

    /// Copy as much of `data` as fits; returns how much.
    fn extend_from(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.remaining());
        let at = self.start + self.len;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Drop the first `n` staged bytes, keeping the rest at the (aligned)
    /// start.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.buf
            .copy_within(self.start + n..self.start + self.len, self.start);
        self.len -= n;
    }
}

fn poisoned() -> DiskError {
    DiskError::InvalidArgument {
        reason: "an earlier write on this shard failed; its content is undefined".into(),
    }
}

enum Target {
    /// Buffered: `tokio::fs::File::write_all`.
    Buffered(tokio::fs::File),
    /// O_DIRECT: aligned `pwrite`s on the blocking pool.
    Direct(Arc<File>),
}

/// Shard writer over a file of a [`TokioFsDisk`](crate::TokioFsDisk).
pub(crate) struct TokioShardWriter {
    disk: Arc<Inner>,
    file: Option<Target>,
    /// The file's directory, fsynced by `finish` so the entry is durable.
    dir: Arc<File>,
    offset: u64,
    /// O_DIRECT staging; `None` for buffered writes (or after a failed
    /// direct write, which also poisons the writer).
    staging: Option<Staging>,
    datasync: bool,
    /// A write failed or was cut off: the file's content is undefined.
    poisoned: bool,
}

impl TokioShardWriter {
    pub(crate) fn new(
        disk: Arc<Inner>,
        file: File,
        dir: Arc<File>,
        staging: Option<Staging>,
        datasync: bool,
    ) -> TokioShardWriter {
        let file = match staging {
            Some(_) => Target::Direct(Arc::new(file)),
            None => Target::Buffered(tokio::fs::File::from_std(file)),
        };
        TokioShardWriter {
            disk,
            file: Some(file),
            dir,
            offset: 0,
            staging,
            datasync,
            poisoned: false,
        }
    }

    fn check(&self) -> Result<()> {
        if self.poisoned {
            return Err(poisoned());
        }
        if self.file.is_none() {
            return Err(DiskError::InvalidArgument {
                reason: "shard writer already finished".into(),
            });
        }
        Ok(())
    }

    fn direct_file(&self) -> Result<Arc<File>> {
        self.check()?;
        match &self.file {
            Some(Target::Direct(f)) => Ok(f.clone()),
            _ => Err(DiskError::InvalidArgument {
                reason: "not an O_DIRECT shard".into(),
            }),
        }
    }

    /// Write the staging buffer's first `len` bytes (a multiple of the
    /// alignment) at the current offset and keep the rest staged. The
    /// writer is poisoned before the write and healed only by its success:
    /// a write cut off by the deadline may still land.
    async fn flush_staged(&mut self, len: usize, class: OpClass, deadline: Deadline) -> Result<()> {
        let file = self.direct_file()?;
        let Some(staging) = self.staging.take() else {
            return Ok(());
        };
        let offset = self.offset;
        self.poisoned = true;
        let mut staging = self
            .disk
            .blocking(class, deadline, move |_| {
                sys::write_all_at(&file, &staging.as_slice()[..len], offset)
                    .map_err(|e| e.into_disk(class, ""))?;
                Ok(staging)
            })
            .await?;
        self.poisoned = false;
        staging.consume(len);
        self.staging = Some(staging);
        self.offset += len as u64;
        Ok(())
    }

    async fn append_buffered(&mut self, data: &[u8]) -> Result<()> {
        let class = OpClass::Append;
        let Some(Target::Buffered(file)) = self.file.as_mut() else {
            return self.check();
        };
        self.poisoned = true;
        file.write_all(data)
            .await
            .map_err(|e| sys::io_err(&e).into_disk(class, ""))?;
        self.poisoned = false;
        self.offset += data.len() as u64;
        Ok(())
    }

    async fn append_direct(&mut self, data: &[u8], deadline: Deadline) -> Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let Some(staging) = self.staging.as_mut() else {
                // Lost with a write that did not finish.
                return Err(poisoned());
            };
            let n = staging.extend_from(rest);
            rest = &rest[n..];
            if staging.remaining() == 0 {
                let full = staging.cap;
                self.flush_staged(full, OpClass::Append, deadline).await?;
            }
        }
        Ok(())
    }

    async fn finish_direct(&mut self, deadline: Deadline) -> Result<()> {
        let class = OpClass::Finish;
        if let Some(staged) = self.staging.as_ref().map(|s| s.len) {
            let align = self.disk.cfg.limits.direct_io_alignment;
            let aligned = staged - staged % align;
            if aligned > 0 {
                self.flush_staged(aligned, class, deadline).await?;
            }
            let tail: Vec<u8> = self
                .staging
                .as_ref()
                .map(|s| s.as_slice().to_vec())
                .unwrap_or_default();
            if !tail.is_empty() {
                // O_DIRECT cannot write an unaligned tail: turn it off first.
                let file = self.direct_file()?;
                let offset = self.offset;
                let n = tail.len() as u64;
                self.poisoned = true;
                self.disk
                    .blocking(class, deadline, move |_| {
                        sys::clear_direct(&file).map_err(|e| e.into_disk(class, ""))?;
                        sys::write_all_at(&file, &tail, offset).map_err(|e| e.into_disk(class, ""))
                    })
                    .await?;
                self.poisoned = false;
                self.offset += n;
                if let Some(s) = self.staging.as_mut() {
                    s.consume(s.len);
                }
            }
        }
        let file = self.direct_file()?;
        let datasync = self.datasync;
        self.disk
            .blocking(class, deadline, move |_| {
                sys::fsync(&file, datasync).map_err(|e| e.into_disk(class, ""))
            })
            .await?;
        if let Some(Target::Direct(file)) = self.file.take() {
            // Other handles exist only in jobs still running, which close
            // it on the pool when they end.
            if let Ok(file) = Arc::try_unwrap(file) {
                self.disk
                    .blocking(class, deadline, move |_| {
                        sys::close(file).map_err(|e| e.into_disk(class, ""))
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn finish_buffered(&mut self, deadline: Deadline) -> Result<()> {
        let class = OpClass::Finish;
        let map = |e: std::io::Error| sys::io_err(&e).into_disk(class, "");
        let Some(Target::Buffered(file)) = self.file.as_mut() else {
            return self.check();
        };
        // The last write's result (tokio::fs::File writes behind), then
        // fsync or fdatasync.
        file.flush().await.map_err(map)?;
        if self.datasync {
            file.sync_data().await.map_err(map)?;
        } else {
            file.sync_all().await.map_err(map)?;
        }
        if let Some(Target::Buffered(file)) = self.file.take() {
            let file = file.into_std().await;
            self.disk
                .blocking(class, deadline, move |_| {
                    sys::close(file).map_err(|e| e.into_disk(class, ""))
                })
                .await?;
        }
        Ok(())
    }
}

impl Drop for TokioShardWriter {
    fn drop(&mut self) {
        match self.file.take() {
            Some(Target::Buffered(f)) => {
                if let Ok(std) = f.try_into_std() {
                    close_off_worker(std);
                }
            }
            Some(Target::Direct(f)) => {
                if let Ok(f) = Arc::try_unwrap(f) {
                    close_off_worker(f);
                }
            }
            None => {}
        }
    }
}

#[async_trait]
impl ShardWriter for TokioShardWriter {
    async fn append(&mut self, data: &[u8], deadline: Deadline) -> Result<()> {
        let disk = self.disk.clone();
        disk.run(OpClass::Append, deadline, None, async {
            self.check()?;
            if matches!(self.file, Some(Target::Direct(_))) {
                self.append_direct(data, deadline).await
            } else {
                self.append_buffered(data).await
            }
        })
        .await
    }

    async fn finish(mut self: Box<Self>, deadline: Deadline) -> Result<u64> {
        let disk = self.disk.clone();
        let class = OpClass::Finish;
        disk.run(class, deadline, None, async {
            self.check()?;
            match self.file {
                Some(Target::Direct(_)) => self.finish_direct(deadline).await?,
                _ => self.finish_buffered(deadline).await?,
            }
            self.disk
                .make_durable(self.dir.clone(), class, "", deadline)
                .await?;
            Ok(self.offset)
        })
        .await
    }
}
