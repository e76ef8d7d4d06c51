//! A bump allocator over one run of RAM: the image's `#[global_allocator]` (with the `image`
//! feature) and a simple page source. Memory is never given back (a freed block is leaked
//! unless it was the last one handed out): enough for an image that allocates at start and
//! then runs in steady state.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

/// A lock-free bump allocator over `[next, end)`.
#[derive(Debug)]
pub struct BumpHeap {
    next: AtomicUsize,
    end: AtomicUsize,
}

impl Default for BumpHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl BumpHeap {
    /// An empty heap: every allocation fails until [`BumpHeap::init`].
    pub const fn new() -> Self {
        BumpHeap {
            next: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
        }
    }

    /// Hand the heap the memory `[start, end)`.
    ///
    /// # Safety
    /// The range must be RAM that nothing else uses, for the rest of the program.
    pub unsafe fn init(&self, start: usize, end: usize) {
        self.end.store(end, Ordering::SeqCst);
        self.next.store(start, Ordering::SeqCst);
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.end
            .load(Ordering::Relaxed)
            .saturating_sub(self.next.load(Ordering::Relaxed))
    }

    /// Allocate `layout`; `None` when out of memory.
    pub fn alloc_raw(&self, layout: Layout) -> Option<usize> {
        let end = self.end.load(Ordering::Acquire);
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return None;
            }
            let start = cur.checked_add(layout.align() - 1)? & !(layout.align() - 1);
            let new = start.checked_add(layout.size())?;
            if new > end {
                return None;
            }
            match self
                .next
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(start),
                Err(c) => cur = c,
            }
        }
    }

    /// Give back `[ptr, ptr+size)` if it is the last block handed out.
    pub fn free_raw(&self, ptr: usize, size: usize) {
        let _ = self
            .next
            .compare_exchange(ptr + size, ptr, Ordering::AcqRel, Ordering::Relaxed);
    }
}

// SAFETY: alloc returns blocks inside the range given to `init` (exclusively ours by its
// contract), aligned as asked, never handed out twice (the bump pointer only moves past
// them, or back over the last block when that block is freed).
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.alloc_raw(layout)
            .map_or(core::ptr::null_mut(), |a| a as *mut u8)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.free_raw(ptr as usize, layout.size());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_aligns_and_runs_out() {
        let h = BumpHeap::new();
        assert!(h
            .alloc_raw(Layout::from_size_align(8, 8).unwrap())
            .is_none());
        // SAFETY: test: the numbers are never dereferenced.
        unsafe { h.init(0x1001, 0x3000) };
        let a = h
            .alloc_raw(Layout::from_size_align(16, 16).unwrap())
            .unwrap();
        assert_eq!(a, 0x1010);
        let b = h
            .alloc_raw(Layout::from_size_align(4096, 4096).unwrap())
            .unwrap();
        assert_eq!(b, 0x2000);
        assert!(h
            .alloc_raw(Layout::from_size_align(1, 1).unwrap())
            .is_none());
        h.free_raw(b, 4096);
        assert_eq!(h.remaining(), 0x1000);
    }
}
