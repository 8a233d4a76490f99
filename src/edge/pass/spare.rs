//! A few spare buffers per thread, so a request on the fast path does not allocate
//! and free its read buffers each time (malloc and free of buffers above glibc's
//! per-thread cache were about 5% of the fast path's CPU). A buffer taken on one
//! thread may come back on another; each thread keeps at most [`KEEP`], none above
//! [`LARGEST`], and an idle connection holds none.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Spare buffers kept per thread.
const KEEP: usize = 8;
/// The largest buffer kept.
const LARGEST: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer that goes back to the spares when dropped (`Buf::default()` is empty and
/// holds no memory).
#[derive(Debug, Default)]
pub struct Buf(Vec<u8>);

impl Buf {
    /// An empty buffer with room for at least `min` bytes, a spare one if there is one.
    pub fn with(min: usize) -> Buf {
        Buf(take(min))
    }
}

impl Deref for Buf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// Every buffer is made at least this large, so spares fit any use without growing.
const SIZE: usize = 16 * 1024;

/// An empty buffer with room for at least `min` bytes.
fn take(min: usize) -> Vec<u8> {
    let spare = SPARE.with(|s| s.borrow_mut().pop());
    match spare {
        Some(mut b) => {
            b.reserve(min);
            b
        }
        None => Vec::with_capacity(min.max(SIZE)),
    }
}

/// Gives `buf` back for the next request on this thread.
fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > LARGEST {
        return;
    }
    buf.clear();
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_and_large_ones_are_not_kept() {
        let mut b = take(100);
        b.extend_from_slice(b"left over");
        let ptr = b.as_ptr();
        give(b);
        let again = take(10);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same allocation");
        give(vec![0; LARGEST + 1]);
        let fresh = take(10);
        assert!(fresh.capacity() < LARGEST);
    }
}
