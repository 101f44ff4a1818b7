//! The raw positional API the bench engine drives (feature `raw`): the same
//! ring and op table as every other call, with the kernel deadline optional
//! so its cost can be priced. Not for storage nodes: an op without a kernel
//! deadline that hangs holds its permit until the device answers.

use disk_io_api::Deadline;

use crate::{Driver, DriverError, File, IoBuf};

/// Whether the kernel is told about an operation's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelDeadline {
    /// The normal mode: a linked timeout plus the ring thread's deadline
    /// heap; the kernel stops work nobody waits for.
    Enforced,
    /// Neither: only the caller's own wait is bounded.
    CallerOnly,
}

impl KernelDeadline {
    fn kernel(self, deadline: Deadline) -> Option<Deadline> {
        match self {
            KernelDeadline::Enforced => Some(deadline),
            KernelDeadline::CallerOnly => None,
        }
    }
}

impl Driver {
    /// Read up to `len` bytes (at most the buffer's capacity) at `offset`.
    pub async fn read_at(
        &self,
        file: &File,
        buf: IoBuf,
        len: usize,
        offset: u64,
        deadline: Deadline,
        mode: KernelDeadline,
    ) -> Result<IoBuf, DriverError> {
        self.read_op(file, buf, len, offset, mode.kernel(deadline), deadline)
            .await
    }

    /// One kernel write of all valid bytes of `buf` at `offset`; returns the
    /// buffer and the bytes written.
    pub async fn write_at(
        &self,
        file: &File,
        buf: IoBuf,
        offset: u64,
        deadline: Deadline,
        mode: KernelDeadline,
    ) -> Result<(IoBuf, usize), DriverError> {
        self.write_op(file, buf, 0, offset, mode.kernel(deadline), deadline)
            .await
    }
}
