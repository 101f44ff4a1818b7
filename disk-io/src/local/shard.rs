//! [`LocalShardWriter`]: appends to a file (an erasure shard), buffered or
//! through an aligned O_DIRECT staging buffer.

use std::sync::Arc;

use async_trait::async_trait;
use disk_io_api::{Deadline, DiskError, OpClass, Result, ShardWriter};
use disk_io_driver::{AlignedBuf, File, IoBuf};

use super::Inner;

/// Shard writer over a local file.
pub(crate) struct LocalShardWriter {
    disk: Arc<Inner>,
    file: Option<File>,
    /// The file's directory, fsynced by `finish` so the entry is durable.
    dir: File,
    offset: u64,
    /// O_DIRECT staging buffer (aligned); `None` for buffered writes.
    staging: Option<AlignedBuf>,
    datasync: bool,
    /// A write failed: the file's content is undefined from here on.
    poisoned: bool,
}

impl LocalShardWriter {
    pub(crate) fn new(
        disk: Arc<Inner>,
        file: File,
        dir: File,
        staging: Option<AlignedBuf>,
        datasync: bool,
    ) -> LocalShardWriter {
        LocalShardWriter {
            disk,
            file: Some(file),
            dir,
            offset: 0,
            staging,
            datasync,
            poisoned: false,
        }
    }

    fn file(&self) -> Result<File> {
        if self.poisoned {
            return Err(DiskError::InvalidArgument {
                reason: "an earlier write on this shard failed; its content is undefined".into(),
            });
        }
        self.file.clone().ok_or(DiskError::InvalidArgument {
            reason: "shard writer already finished".into(),
        })
    }

    /// Write `buf` at the current offset. The writer is poisoned *before*
    /// the write and healed only by its success: if the caller drops the
    /// future mid-write (a timeout, a `select!`), the kernel may still land
    /// the bytes, so the file's content is undefined and the writer refuses
    /// to go on rather than `finish` a torn shard as `Ok`.
    async fn write(&mut self, buf: IoBuf, class: OpClass, deadline: Deadline) -> Result<IoBuf> {
        let file = self.file()?;
        let len = buf.len() as u64;
        self.poisoned = true;
        let b = self
            .disk
            .write_all_at(&file, buf, self.offset, class, deadline)
            .await?;
        self.poisoned = false;
        self.offset += len;
        Ok(b)
    }

    /// Write the staging buffer's first `len` bytes (a multiple of the
    /// alignment) and keep the rest staged.
    async fn flush_staged(&mut self, len: usize, deadline: Deadline) -> Result<()> {
        let Some(mut staging) = self.staging.take() else {
            return Ok(());
        };
        let keep = staging.as_slice()[len..].to_vec();
        staging.truncate(len);
        match self
            .write(IoBuf::Aligned(staging), OpClass::Append, deadline)
            .await?
        {
            IoBuf::Aligned(mut b) => {
                b.clear();
                b.extend_from(&keep);
                self.staging = Some(b);
                Ok(())
            }
            IoBuf::Vec(_) => unreachable!("the driver hands back the buffer it was given"),
        }
    }
}

#[async_trait]
impl ShardWriter for LocalShardWriter {
    async fn append(&mut self, data: &[u8], deadline: Deadline) -> Result<()> {
        let disk = self.disk.clone();
        disk.run(OpClass::Append, deadline, None, async {
            self.file()?;
            if self.staging.is_none() {
                return self
                    .write(IoBuf::Vec(data.to_vec()), OpClass::Append, deadline)
                    .await
                    .map(|_| ());
            }
            let mut rest = data;
            while !rest.is_empty() {
                let Some(staging) = self.staging.as_mut() else {
                    unreachable!("staging is put back after every flush");
                };
                let n = staging.extend_from(rest);
                rest = &rest[n..];
                if staging.remaining() == 0 {
                    let full = staging.capacity();
                    self.flush_staged(full, deadline).await?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn finish(mut self: Box<Self>, deadline: Deadline) -> Result<u64> {
        let disk = self.disk.clone();
        let class = OpClass::Finish;
        let committed = std::sync::atomic::AtomicBool::new(false);
        disk.run_committing(class, deadline, None, &committed, async {
            let file = self.file()?;
            if let Some(staged) = self.staging.as_ref().map(|s| s.as_slice().len()) {
                let align = self.disk.cfg.limits.direct_io_alignment;
                let aligned = staged - staged % align;
                if aligned > 0 {
                    self.flush_staged(aligned, deadline).await?;
                }
                let tail: Vec<u8> = self
                    .staging
                    .as_ref()
                    .map(|s| s.as_slice().to_vec())
                    .unwrap_or_default();
                if !tail.is_empty() {
                    // O_DIRECT cannot write an unaligned tail.
                    self.poisoned = true;
                    file.set_direct(false)
                        .map_err(|e| Inner::err(e, class, ""))?;
                    self.poisoned = false;
                    self.write(IoBuf::Vec(tail), class, deadline).await?;
                }
            }
            let driver = &self.disk.driver;
            driver
                .fsync(&file, self.datasync, deadline)
                .await
                .map_err(|e| Inner::err(e, class, ""))?;
            drop(file);
            if let Some(file) = self.file.take() {
                driver
                    .close(file, deadline)
                    .await
                    .map_err(|e| Inner::err(e, class, ""))?;
            }
            self.disk
                .make_durable(&self.dir, class, "", deadline)
                .await?;
            Ok(self.offset)
        })
        .await
    }
}
