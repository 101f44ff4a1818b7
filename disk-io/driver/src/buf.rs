//! Buffers the kernel reads from or writes into while an operation is in
//! flight. They are owned by the driver's op table until the completion
//! arrives, never borrowed from the caller: a caller that gives up must not be
//! able to free memory the kernel is still writing.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// A heap buffer, optionally aligned for O_DIRECT.
#[derive(Debug)]
pub enum IoBuf {
    /// An ordinary vector; its length is the number of valid bytes.
    Vec(Vec<u8>),
    /// An aligned allocation for O_DIRECT.
    Aligned(AlignedBuf),
}

impl IoBuf {
    /// A buffer with room for `capacity` bytes and no valid bytes yet.
    pub fn with_capacity(capacity: usize) -> IoBuf {
        IoBuf::Vec(Vec::with_capacity(capacity))
    }

    /// Valid bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Vec(v) => v,
            IoBuf::Aligned(a) => a.as_slice(),
        }
    }

    /// Number of valid bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// No valid bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room in bytes.
    pub fn capacity(&self) -> usize {
        match self {
            IoBuf::Vec(v) => v.capacity(),
            IoBuf::Aligned(a) => a.capacity(),
        }
    }

    /// Pointer to the first byte, for the kernel to read from.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            IoBuf::Vec(v) => v.as_ptr(),
            IoBuf::Aligned(a) => a.ptr.as_ptr(),
        }
    }

    /// Pointer to the first byte, for the kernel to write into.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            IoBuf::Vec(v) => v.as_mut_ptr(),
            IoBuf::Aligned(a) => a.ptr.as_ptr(),
        }
    }

    /// Mark the first `len` bytes valid after the kernel wrote them.
    ///
    /// # Safety
    /// `len <= capacity()` and the kernel initialised those bytes (a read's
    /// completion result says how many).
    pub(crate) unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity());
        match self {
            // SAFETY: the caller guarantees the bytes are initialised and in bounds.
            IoBuf::Vec(v) => unsafe { v.set_len(len) },
            IoBuf::Aligned(a) => a.set_len(len),
        }
    }

    /// The bytes as a vector (copies only for aligned buffers).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            IoBuf::Vec(v) => v,
            IoBuf::Aligned(a) => a.as_slice().to_vec(),
        }
    }
}

/// A zero-initialised allocation aligned to a power of two, for O_DIRECT.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    align: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read the bytes.
unsafe impl Sync for AlignedBuf {}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .field("align", &self.align)
            .finish()
    }
}

impl AlignedBuf {
    /// A zeroed buffer of `cap` bytes aligned to `align`, or `None` when the
    /// layout is invalid (align not a power of two, cap zero or too large) or
    /// the allocation fails.
    pub fn new(cap: usize, align: usize) -> Option<AlignedBuf> {
        if cap == 0 {
            return None;
        }
        let layout = Layout::from_size_align(cap, align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })?;
        Some(AlignedBuf {
            ptr,
            len: 0,
            cap,
            align,
        })
    }

    /// Valid bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len bytes, all initialised (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Room in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes free after the valid ones.
    pub fn remaining(&self) -> usize {
        self.cap - self.len
    }

    /// Append as much of `data` as fits; returns how many bytes were taken.
    pub fn extend_from(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.remaining());
        // SAFETY: [len, len + n) is within the allocation and does not overlap `data`
        // (data is a caller slice, not a view of this buffer: &mut self forbids that).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(self.len), n);
        }
        self.len += n;
        n
    }

    /// Set the number of valid bytes (clamped to the capacity). Safe for
    /// any length: the allocation is zeroed at creation, so every byte is
    /// always initialised.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.cap);
    }

    /// Valid bytes, mutable (e.g. to fill a write buffer in place).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Forget the valid bytes (keeps the allocation).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` valid bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe {
            alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, self.align),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_tracks_length() {
        let mut b = AlignedBuf::new(8192, 4096).expect("alloc");
        assert_eq!(b.ptr.as_ptr() as usize % 4096, 0);
        assert_eq!(b.extend_from(&[1, 2, 3]), 3);
        assert_eq!(b.as_slice(), &[1, 2, 3]);
        b.truncate(2);
        assert_eq!(b.as_slice(), &[1, 2]);
        let big = vec![7u8; 10_000];
        assert_eq!(b.extend_from(&big), 8192 - 2);
        assert_eq!(b.remaining(), 0);
    }

    #[test]
    fn invalid_layouts_are_refused() {
        assert!(AlignedBuf::new(0, 4096).is_none());
        assert!(AlignedBuf::new(4096, 3).is_none());
    }
}
