//! The image's `#[global_allocator]` (with the `image` feature): a first-fit free-list
//! allocator. Free blocks form a list sorted by address, each block's header (size, next)
//! stored in the block itself; freeing inserts in order and merges with both neighbours, so
//! memory is reused. When no block fits, the heap asks its `grow` function (the page
//! allocator, in images) for more pages.
//!
//! Blocks are multiples of 16 bytes, 16-aligned (the size of a free-block header), and the
//! size of a freed block is recomputed from its `Layout` exactly as at allocation.

use core::alloc::{GlobalAlloc, Layout};

use crate::sync::SpinLock;

const UNIT: usize = 16;

/// Header of a free block, at its start.
#[repr(C)]
struct Free {
    size: usize,
    next: usize,
}

#[derive(Debug)]
struct Inner {
    /// Address of the first free block (0: none).
    head: usize,
    /// Bytes in free blocks.
    free: usize,
}

/// Where more memory comes from: `grow(bytes)` returns a fresh region `[start, end)` of at
/// least `bytes`, owned by the heap from then on.
pub type Grow = fn(usize) -> Option<(usize, usize)>;

/// Where whole free pages go back: `release(addr, pages)` takes page-aligned memory the heap
/// had from `grow` and holds free; `false`: not taken (the heap keeps it).
pub type Release = fn(usize, usize) -> bool;

/// A free block of at least this many whole pages is given back through [`Release`] when
/// it forms (a freed RAM disk, a large buffer): the page allocator cannot use memory the heap
/// holds, and pages (grant buffers, rings) need it contiguous (session 5: a storage domain with
/// 11 MiB free in its heap failed a 1 MiB page allocation).
pub const RELEASE_PAGES: usize = 64;
const PAGE: usize = 4096;

/// A free-list allocator.
#[derive(Debug)]
pub struct Heap {
    inner: SpinLock<Inner>,
    grow: Option<Grow>,
    release: Option<Release>,
}

impl Default for Heap {
    fn default() -> Self {
        Self::new(None)
    }
}

fn round(layout: Layout) -> (usize, usize) {
    let size = layout.size().max(1).div_ceil(UNIT) * UNIT;
    (size, layout.align().max(UNIT))
}

impl Heap {
    /// An empty heap that grows with `grow` (`None`: only what [`Heap::add`] gives it).
    pub const fn new(grow: Option<Grow>) -> Self {
        Heap {
            inner: SpinLock::new(Inner { head: 0, free: 0 }),
            grow,
            release: None,
        }
    }

    /// A heap that grows with `grow` and gives runs of [`RELEASE_PAGES`] or more free pages
    /// back through `release`.
    pub const fn with_release(grow: Grow, release: Release) -> Self {
        Heap {
            inner: SpinLock::new(Inner { head: 0, free: 0 }),
            grow: Some(grow),
            release: Some(release),
        }
    }

    /// Give the heap the memory `[start, end)` (rounded inwards to 16 bytes).
    ///
    /// # Safety
    /// The range must be writable RAM that nothing else uses, for the rest of the program.
    pub unsafe fn add(&self, start: usize, end: usize) {
        let s = start.div_ceil(UNIT) * UNIT;
        let e = end & !(UNIT - 1);
        if e > s {
            // SAFETY: (caller) the range is ours now; insert takes it as a free block.
            self.inner.with(|i| unsafe { i.insert(s, e - s) });
        }
    }

    /// Bytes currently free (in the list).
    pub fn free_bytes(&self) -> usize {
        self.inner.with(|i| i.free)
    }

    /// Number of free blocks (fragmentation).
    pub fn free_blocks(&self) -> usize {
        // SAFETY: the list only holds blocks the heap owns.
        self.inner.with(|i| unsafe { i.blocks() })
    }

    /// Allocate `layout`; `None` when out of memory.
    pub fn alloc_raw(&self, layout: Layout) -> Option<usize> {
        let (size, align) = round(layout);
        // SAFETY: the list only holds blocks the heap owns.
        if let Some(a) = self.inner.with(|i| unsafe { i.take(size, align) }) {
            return Some(a);
        }
        let (s, e) = (self.grow?)(size + align)?;
        // SAFETY: `grow` hands over a region the heap owns from now on (its contract).
        unsafe { self.add(s, e) };
        // SAFETY: as above.
        self.inner.with(|i| unsafe { i.take(size, align) })
    }

    /// Free a block from [`Heap::alloc_raw`] with the same layout.
    ///
    /// # Safety
    /// `ptr` must come from `alloc_raw(layout)` of this heap and not be freed yet.
    pub unsafe fn free_raw(&self, ptr: usize, layout: Layout) {
        let (size, _) = round(layout);
        // SAFETY: (caller) the block is ours again.
        let (start, len) = self.inner.with(|i| unsafe { i.insert(ptr, size) });
        let Some(release) = self.release else {
            return;
        };
        let (a, e) = (start.div_ceil(PAGE) * PAGE, (start + len) & !(PAGE - 1));
        if e <= a || (e - a) / PAGE < RELEASE_PAGES {
            return;
        }
        // SAFETY: [a, e) lies inside the free block just formed, on the list.
        let taken = self.inner.with(|i| unsafe { i.cut(a, e) });
        if taken && !release(a, (e - a) / PAGE) {
            // Not the page allocator's (e.g. a region given with `add`): keep it.
            // SAFETY: [a, e) was cut from the list above and is still the heap's.
            self.inner.with(|i| unsafe { i.insert(a, e - a) });
        }
    }
}

impl Inner {
    /// # Safety
    /// `at` must be a free block of the heap (16-aligned, ≥ 16 bytes).
    unsafe fn hdr(at: usize) -> *mut Free {
        at as *mut Free
    }

    /// # Safety
    /// Every block on the list is owned by the heap.
    unsafe fn blocks(&self) -> usize {
        let (mut n, mut b) = (0, self.head);
        while b != 0 {
            n += 1;
            // SAFETY: (caller) b is a free block.
            b = unsafe { (*Self::hdr(b)).next };
        }
        n
    }

    /// Set the `next` link of `prev` (0: the head) to `to`.
    ///
    /// # Safety
    /// `prev` is 0 or a free block.
    unsafe fn link(&mut self, prev: usize, to: usize) {
        if prev == 0 {
            self.head = to;
        } else {
            // SAFETY: (caller) prev is a free block.
            unsafe { (*Self::hdr(prev)).next = to };
        }
    }

    /// First fit: carve `size` bytes aligned to `align` out of a free block.
    ///
    /// # Safety
    /// Every block on the list is owned by the heap.
    unsafe fn take(&mut self, size: usize, align: usize) -> Option<usize> {
        let (mut prev, mut b) = (0usize, self.head);
        while b != 0 {
            // SAFETY: (caller) b is a free block: its header is readable.
            let Free { size: bs, next } = unsafe { Self::hdr(b).read() };
            let start = b.checked_add(align - 1)? & !(align - 1);
            let end = start.checked_add(size)?;
            if end <= b + bs {
                // SAFETY: [start, end) lies in the free block b, whose predecessor is prev.
                unsafe { self.split(prev, b, bs, next, start, end) };
                return Some(start);
            }
            prev = b;
            b = next;
        }
        None
    }

    /// Take `[start, end)` out of free block `b` (`bs` bytes, followed by `next`, preceded by
    /// `prev` on the list): the gap before `start` stays free (a multiple of 16, so ≥ 16 if
    /// non-zero), as does the tail after `end`.
    ///
    /// # Safety
    /// `b` is a free block on the list after `prev` (0: the head), `b <= start <= end <= b + bs`,
    /// both bounds 16-aligned.
    unsafe fn split(
        &mut self,
        prev: usize,
        b: usize,
        bs: usize,
        next: usize,
        start: usize,
        end: usize,
    ) {
        let mut after = next;
        if end < b + bs {
            // SAFETY: [end, b+bs) is part of the free block, 16-aligned, ≥ 16 bytes.
            unsafe {
                Self::hdr(end).write(Free {
                    size: b + bs - end,
                    next,
                })
            };
            after = end;
        }
        if start > b {
            // SAFETY: b is still a free block, now of start - b bytes.
            unsafe {
                Self::hdr(b).write(Free {
                    size: start - b,
                    next: after,
                })
            };
        } else {
            // SAFETY: prev is 0 or a free block.
            unsafe { self.link(prev, after) };
        }
        self.free -= end - start;
    }

    /// Take `[a, e)` (16-aligned) off the list: it must lie inside one free block. `false`
    /// if no free block holds all of it.
    ///
    /// # Safety
    /// Every block on the list is owned by the heap.
    unsafe fn cut(&mut self, a: usize, e: usize) -> bool {
        let (mut prev, mut b) = (0usize, self.head);
        while b != 0 {
            // SAFETY: (caller) b is a free block: its header is readable.
            let Free { size: bs, next } = unsafe { Self::hdr(b).read() };
            if b <= a && e <= b + bs {
                // SAFETY: [a, e) lies in the free block b, whose predecessor is prev.
                unsafe { self.split(prev, b, bs, next, a, e) };
                return true;
            }
            prev = b;
            b = next;
        }
        false
    }

    /// Put `[at, at+size)` on the list in address order, merging with its neighbours. Returns
    /// the free block it ended up in (`start`, `len`).
    ///
    /// # Safety
    /// The block is owned by the heap and not on the list; every block on the list is owned.
    unsafe fn insert(&mut self, at: usize, size: usize) -> (usize, usize) {
        let (mut prev, mut b) = (0usize, self.head);
        while b != 0 && b < at {
            prev = b;
            // SAFETY: (caller) b is a free block.
            b = unsafe { (*Self::hdr(b)).next };
        }
        debug_assert!(
            b == 0 || at + size <= b,
            "heap: freed block overlaps a free one"
        );
        self.free += size;
        let (start, mut len, mut next) = (at, size, b);
        if b != 0 && at + size == b {
            // SAFETY: b is a free block; it merges into ours.
            let f = unsafe { Self::hdr(b).read() };
            len += f.size;
            next = f.next;
        }
        if prev != 0 {
            // SAFETY: prev is a free block.
            let p = unsafe { &mut *Self::hdr(prev) };
            if prev + p.size == at {
                p.size += len;
                p.next = next;
                return (prev, p.size);
            }
        }
        // SAFETY: [start, start+len) is ours (the freed block, plus b if merged).
        unsafe { Self::hdr(start).write(Free { size: len, next }) };
        // SAFETY: prev is 0 or a free block.
        unsafe { self.link(prev, start) };
        (start, len)
    }
}

// SAFETY: alloc returns blocks inside regions given to the heap (exclusively its own by the
// contracts of `add` and `grow`), aligned as asked and never handed out twice: a block is
// either on the free list or allocated, and the list's blocks never overlap.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.alloc_raw(layout)
            .map_or(core::ptr::null_mut(), |a| a as *mut u8)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: (GlobalAlloc contract) ptr came from alloc(layout) and is freed once.
        unsafe { self.free_raw(ptr as usize, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Arena([u8; 64 * 1024]);

    fn heap_over(arena: &mut Arena) -> (Heap, usize, usize) {
        let h = Heap::new(None);
        let s = arena.0.as_mut_ptr() as usize;
        let e = s + arena.0.len();
        // SAFETY: test: the arena is ours and outlives the heap's use.
        unsafe { h.add(s, e) };
        (h, s, e)
    }

    #[test]
    fn reuses_and_merges_freed_blocks() {
        let mut arena = Box::new(Arena([0; 64 * 1024]));
        let (h, s, e) = heap_over(&mut arena);
        let l = |n, a| Layout::from_size_align(n, a).unwrap();
        let a = h.alloc_raw(l(10, 1)).unwrap();
        let b = h.alloc_raw(l(100, 8)).unwrap();
        let c = h.alloc_raw(l(4096, 4096)).unwrap();
        assert_eq!(a, s);
        assert_eq!(b, s + 16);
        assert_eq!(c % 4096, 0);
        assert_eq!(h.free_blocks(), 2, "gap before the aligned block, tail");
        // SAFETY: each pointer came from alloc_raw with this layout.
        unsafe { h.free_raw(b, l(100, 8)) };
        assert_eq!(
            h.alloc_raw(l(112, 16)).unwrap(),
            b,
            "the freed block is reused"
        );
        // SAFETY: as above.
        unsafe {
            h.free_raw(b, l(112, 16));
            h.free_raw(a, l(10, 1));
            h.free_raw(c, l(4096, 4096));
        }
        assert_eq!(h.free_blocks(), 1, "everything merged back");
        assert_eq!(h.free_bytes(), e - s);
        assert!(h.alloc_raw(l(e - s + 1, 1)).is_none());
        assert_eq!(h.alloc_raw(l(e - s, 16)), Some(s));
    }

    #[test]
    fn random_alloc_free_never_overlaps_and_merges_back() {
        let mut arena = Box::new(Arena([0; 64 * 1024]));
        let (h, s, e) = heap_over(&mut arena);
        let mut live: Vec<(usize, Layout)> = Vec::new();
        let mut x = 12345u64;
        let mut rnd = |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        for _ in 0..20_000 {
            if rnd(3) != 0 || live.is_empty() {
                let size = 1 + rnd(700) as usize;
                let align = 1 << rnd(8);
                let lay = Layout::from_size_align(size, align).unwrap();
                if let Some(p) = h.alloc_raw(lay) {
                    assert_eq!(p % align, 0);
                    assert!(p >= s && p + size <= e);
                    for &(q, ql) in &live {
                        assert!(p + size <= q || q + ql.size() <= p, "overlap");
                    }
                    live.push((p, lay));
                }
            } else {
                let i = rnd(live.len() as u64) as usize;
                let (p, lay) = live.swap_remove(i);
                // SAFETY: p came from alloc_raw(lay) and is freed once.
                unsafe { h.free_raw(p, lay) };
            }
        }
        for (p, lay) in live {
            // SAFETY: as above.
            unsafe { h.free_raw(p, lay) };
        }
        assert_eq!(h.free_blocks(), 1);
        assert_eq!(h.free_bytes(), e - s);
    }

    #[test]
    fn grows_from_its_page_source() {
        fn grow(n: usize) -> Option<(usize, usize)> {
            let pages = n.div_ceil(4096).max(4);
            let v: &'static mut [u8] = Box::leak(vec![0u8; pages * 4096 + 16].into_boxed_slice());
            let s = v.as_mut_ptr() as usize;
            Some((s, s + v.len()))
        }
        let h = Heap::new(Some(grow));
        let a = h
            .alloc_raw(Layout::from_size_align(5000, 8).unwrap())
            .unwrap();
        let b = h
            .alloc_raw(Layout::from_size_align(64, 64).unwrap())
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(b % 64, 0);
    }

    /// The release test's page source: one leaked 1 MiB arena handed out once by `grow`, and
    /// what `release` was given (address, pages) — recorded, and taken only page-aligned.
    static ARENA: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    static RELEASED: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

    fn grow_once(bytes: usize) -> Option<(usize, usize)> {
        let a = ARENA.swap(0, core::sync::atomic::Ordering::SeqCst);
        (a != 0 && bytes <= 1 << 20).then_some((a, a + (1 << 20)))
    }

    fn record_release(addr: usize, pages: usize) -> bool {
        assert_eq!(addr % PAGE, 0);
        RELEASED.lock().unwrap().push((addr, pages));
        true
    }

    #[test]
    fn large_free_runs_go_back_to_the_page_allocator() {
        // SAFETY: test: a fresh 1 MiB, page-aligned, leaked (the heap owns it from now on).
        let s = unsafe { std::alloc::alloc_zeroed(Layout::from_size_align(1 << 20, PAGE).unwrap()) }
            as usize;
        assert_ne!(s, 0);
        ARENA.store(s, core::sync::atomic::Ordering::SeqCst);
        let h = Heap::with_release(grow_once, record_release);
        let l = |n, a| Layout::from_size_align(n, a).unwrap();
        let small = h.alloc_raw(l(100, 8)).unwrap();
        assert_eq!(small, s);
        // 512 KiB, freed: its whole pages (after the small block's page) go back
        let big = h.alloc_raw(l(512 << 10, 16)).unwrap();
        // SAFETY: big came from alloc_raw with this layout.
        unsafe { h.free_raw(big, l(512 << 10, 16)) };
        let r = RELEASED.lock().unwrap().clone();
        assert_eq!(r.len(), 1, "{r:?}");
        let (a, n) = r[0];
        assert_eq!(
            a,
            s + PAGE,
            "from the first whole page after the small block"
        );
        assert_eq!(
            a + n * PAGE,
            s + (1 << 20),
            "to the end of the merged free run"
        );
        assert_eq!(
            h.free_bytes(),
            PAGE - 112,
            "the partial page stays in the heap"
        );
        // a free that forms fewer than RELEASE_PAGES whole pages releases nothing
        // SAFETY: small came from alloc_raw with this layout.
        unsafe { h.free_raw(small, l(100, 8)) };
        assert_eq!(RELEASED.lock().unwrap().len(), 1);
        assert_eq!(h.free_bytes(), PAGE);
        // the heap can still serve from what it kept
        assert_eq!(h.alloc_raw(l(PAGE, 16)), Some(s));
    }
}
