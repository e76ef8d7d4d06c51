//! The page allocator: one run of RAM, a bitmap of its pages (one bit per page, set = in use)
//! kept in the first pages of the run, first-fit allocation of contiguous runs.
//!
//! It hands out addresses only; zeroing, grant checks and frame numbers are the platform's
//! ([`Pages`](xen_platform::Pages) for [`Xen`](crate::Xen)).

use crate::sync::SpinLock;

/// Page size.
pub const PAGE: usize = 4096;
/// Runs of at least this many pages come from the top of the range (see [`PageAlloc::alloc`]).
pub const LARGE: usize = 64;

#[derive(Debug)]
struct Inner {
    /// First page handed out (after the bitmap).
    base: usize,
    /// Pages from `base`.
    pages: usize,
    /// `ceil(pages / 64)` words.
    bitmap: *mut u64,
    /// Pages in use.
    used: usize,
}

// SAFETY: the bitmap pointer refers to memory owned by the allocator (init contract); it is
// only dereferenced under the lock.
unsafe impl Send for Inner {}

/// A bitmap page allocator over `[start, end)`.
#[derive(Debug)]
pub struct PageAlloc {
    inner: SpinLock<Inner>,
}

impl Default for PageAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl PageAlloc {
    /// An empty allocator: every allocation fails until [`PageAlloc::init`].
    pub const fn new() -> Self {
        PageAlloc {
            inner: SpinLock::new(Inner {
                base: 0,
                pages: 0,
                bitmap: core::ptr::null_mut(),
                used: 0,
            }),
        }
    }

    /// Hand the allocator `[start, end)` (rounded inwards to pages). The bitmap takes the first
    /// page(s). Returns the number of pages it manages (0 if the range is too small).
    ///
    /// # Safety
    /// The range must be writable RAM that nothing else uses, for the rest of the program, and
    /// `init` is called at most once.
    pub unsafe fn init(&self, start: usize, end: usize) -> usize {
        let start = (start + PAGE - 1) & !(PAGE - 1);
        let end = end & !(PAGE - 1);
        if end <= start {
            return 0;
        }
        let total = (end - start) / PAGE;
        // Pages needed for a bitmap of the remaining pages (64 bits per word, 512 words/page).
        let meta = total.div_ceil(PAGE * 8);
        if total <= meta {
            return 0;
        }
        let pages = total - meta;
        let words = pages.div_ceil(64);
        let bitmap = start as *mut u64;
        // SAFETY: (caller) the range is ours; the bitmap's `words` words lie in its first
        // `meta` pages.
        unsafe { core::ptr::write_bytes(bitmap, 0, words) };
        self.inner.with(|i| {
            *i = Inner {
                base: start + meta * PAGE,
                pages,
                bitmap,
                used: 0,
            };
        });
        pages
    }

    /// `(first address handed out, end)` of the managed range.
    pub fn range(&self) -> (usize, usize) {
        self.inner.with(|i| (i.base, i.base + i.pages * PAGE))
    }

    /// Pages `(in use, managed)`.
    pub fn usage(&self) -> (usize, usize) {
        self.inner.with(|i| (i.used, i.pages))
    }

    /// Whether `addr` lies in the managed range.
    pub fn contains(&self, addr: usize) -> bool {
        let (b, e) = self.range();
        (b..e).contains(&addr)
    }

    /// Allocate `n` contiguous pages (not zeroed); their address. Runs of [`LARGE`] pages or
    /// more are taken from the top of the range, smaller ones from the bottom, so that small
    /// long-lived pages (heap chunks, rings) do not split the space big ones need again after
    /// they are freed (a storage domain's RAM disk of one guest, then of the next).
    pub fn alloc(&self, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        if n >= LARGE {
            return self.inner.with(|i| {
                let mut run = 0;
                for p in (0..i.pages).rev() {
                    if i.get(p) {
                        run = 0;
                        continue;
                    }
                    run += 1;
                    if run == n {
                        for q in p..p + n {
                            i.set(q, true);
                        }
                        i.used += n;
                        return Some(i.base + p * PAGE);
                    }
                }
                None
            });
        }
        self.inner.with(|i| {
            let mut run = 0;
            let mut p = 0;
            while p < i.pages {
                let w = i.word(p / 64);
                if p % 64 == 0 && w == u64::MAX {
                    run = 0;
                    p += 64;
                    continue;
                }
                if w & (1 << (p % 64)) != 0 {
                    run = 0;
                } else {
                    run += 1;
                    if run == n {
                        let first = p + 1 - n;
                        for q in first..=p {
                            i.set(q, true);
                        }
                        i.used += n;
                        return Some(i.base + first * PAGE);
                    }
                }
                p += 1;
            }
            None
        })
    }

    /// Mark `n` free pages at `addr` as in use for good (pages the allocator's range covers but
    /// something else owns, e.g. page tables). `false` (nothing reserved) if any is not free.
    pub fn reserve(&self, addr: usize, n: usize) -> bool {
        self.inner.with(|i| {
            if addr < i.base || !addr.is_multiple_of(PAGE) || n == 0 {
                return false;
            }
            let first = (addr - i.base) / PAGE;
            if first + n > i.pages || (first..first + n).any(|q| i.get(q)) {
                return false;
            }
            for q in first..first + n {
                i.set(q, true);
            }
            i.used += n;
            true
        })
    }

    /// Free `n` pages at `addr`. `false` (and nothing freed) if they are not `n` allocated
    /// pages of this allocator.
    pub fn free(&self, addr: usize, n: usize) -> bool {
        self.inner.with(|i| {
            if addr < i.base || !addr.is_multiple_of(PAGE) || n == 0 {
                return false;
            }
            let first = (addr - i.base) / PAGE;
            if first + n > i.pages || !(first..first + n).all(|q| i.get(q)) {
                return false;
            }
            for q in first..first + n {
                i.set(q, false);
            }
            i.used -= n;
            true
        })
    }
}

impl Inner {
    fn word(&self, w: usize) -> u64 {
        // SAFETY: w < ceil(pages/64): inside the bitmap (init), accessed under the lock.
        unsafe { self.bitmap.add(w).read() }
    }
    fn get(&self, p: usize) -> bool {
        self.word(p / 64) & (1 << (p % 64)) != 0
    }
    fn set(&mut self, p: usize, v: bool) {
        let w = self.word(p / 64);
        let w = if v {
            w | 1 << (p % 64)
        } else {
            w & !(1 << (p % 64))
        };
        // SAFETY: as in `word`.
        unsafe { self.bitmap.add(p / 64).write(w) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Arena([u8; 40 * PAGE]);

    #[test]
    fn allocates_first_fit_and_frees() {
        let mut arena = Box::new(Arena([0; 40 * PAGE]));
        let start = arena.0.as_mut_ptr() as usize;
        let a = PageAlloc::new();
        assert_eq!(a.alloc(1), None);
        // SAFETY: test: the arena is ours and outlives the allocator's use.
        let n = unsafe { a.init(start + 1, start + 40 * PAGE) };
        assert_eq!(n, 38); // one page lost to alignment, one to the bitmap
        let (base, end) = a.range();
        assert_eq!(base, start + 2 * PAGE);
        assert_eq!(end, start + 40 * PAGE);
        let x = a.alloc(3).unwrap();
        let y = a.alloc(1).unwrap();
        assert_eq!((x, y), (base, base + 3 * PAGE));
        assert!(a.free(x, 3));
        assert!(!a.free(x, 3), "double free refused");
        assert!(!a.free(y, 2), "free beyond the allocation refused");
        assert_eq!(
            a.alloc(4).unwrap(),
            base + 4 * PAGE,
            "the 3-page hole is too small"
        );
        assert_eq!(a.alloc(2).unwrap(), base);
        assert_eq!(a.usage(), (7, 38));
        assert_eq!(a.alloc(38), None);
        let rest = a.alloc(38 - 8).unwrap();
        assert_eq!(rest, base + 8 * PAGE);
        assert_eq!(a.alloc(1).unwrap(), base + 2 * PAGE);
        assert_eq!(a.alloc(1), None);
        assert!(a.contains(base) && !a.contains(end));
        assert!(!a.reserve(base, 1), "in use");
        assert!(a.free(base, 1));
        assert!(a.reserve(base, 1));
        assert_eq!(a.alloc(1), None);
    }

    #[test]
    fn large_runs_come_from_the_top_small_ones_from_the_bottom() {
        const N: usize = 300;
        // SAFETY: test: a fresh page-aligned region, leaked (the allocator's from now on).
        let start = unsafe {
            std::alloc::alloc_zeroed(core::alloc::Layout::from_size_align(N * PAGE, PAGE).unwrap())
        } as usize;
        let a = PageAlloc::new();
        // SAFETY: as above.
        let n = unsafe { a.init(start, start + N * PAGE) };
        let (base, end) = a.range();
        let big = a.alloc(128).unwrap();
        assert_eq!(big, end - 128 * PAGE, "a large run from the top");
        let small = a.alloc(16).unwrap();
        assert_eq!(small, base, "a small one from the bottom");
        // the large one freed, another small one does not land in its space...
        assert!(a.free(big, 128));
        assert_eq!(a.alloc(16).unwrap(), base + 16 * PAGE);
        // ...so the next large run fits where the first one was
        assert_eq!(a.alloc(n - 32).unwrap(), base + 32 * PAGE);
        assert_eq!(a.alloc(LARGE), None);
    }
}
