//! Machine memory and the address-space operations on it.
//!
//! "Machine memory" is one memfd; frame `f` is the page at byte offset `f * PAGE_SIZE` of the
//! file. A domain's pages and every grant mapping are `MAP_SHARED` mappings of that file, so
//! two domains that map the same frame see the same bytes at different addresses, as on Xen.
//!
//! Every `unsafe` block of the crate is in this module. The rule that keeps them sound: the
//! simulator only ever maps into, replaces or unmaps address ranges that it created itself
//! with [`reserve`] or [`map_one`] and that no Rust reference points into (callers hold raw
//! pointers only, whose validity the trait documents: until `free`/`unmap`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

use xen_platform::{XenPfn, PAGE_SIZE};

/// Create the (empty) machine-memory file.
pub(crate) fn memfd() -> io::Result<File> {
    let name = c"xen-sim machine memory";
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; memfd_create
    // reads nothing else and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns or will close.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owned))
}

fn prot(writable: bool) -> libc::c_int {
    if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    }
}

fn frame_offset(frame: XenPfn) -> Option<libc::off_t> {
    let off = frame.checked_mul(PAGE_SIZE as u64)?;
    libc::off_t::try_from(off).ok()
}

/// Reserve `len` bytes of fresh address space (inaccessible until frames are mapped into it).
pub(crate) fn reserve(len: usize) -> Option<usize> {
    // SAFETY: a new anonymous PROT_NONE mapping at an address the kernel picks; it replaces
    // nothing and no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        Some(p as usize)
    }
}

/// Map `frames` at consecutive pages starting at `base`, which must be a range this crate
/// reserved with [`reserve`] of at least `frames.len()` pages. Runs of consecutive frames are
/// mapped with one call. Returns false if a mapping failed (the range stays reserved; the
/// caller unmaps it).
pub(crate) fn map_frames_at(file: &File, base: usize, frames: &[XenPfn], writable: bool) -> bool {
    let mut i = 0;
    while i < frames.len() {
        let mut n = 1;
        while i + n < frames.len() && frames[i + n] == frames[i].wrapping_add(n as u64) {
            n += 1;
        }
        let Some(off) = frame_offset(frames[i]) else {
            return false;
        };
        let addr = base + i * PAGE_SIZE;
        // SAFETY: [addr, addr + n pages) lies inside a reservation this crate made for this
        // call and that nobody else references yet; MAP_FIXED replaces only that range.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                n * PAGE_SIZE,
                prot(writable),
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        i += n;
    }
    true
}

/// Map one frame at a fresh address.
pub(crate) fn map_one(file: &File, frame: XenPfn, writable: bool) -> Option<usize> {
    let off = frame_offset(frame)?;
    // SAFETY: a new shared mapping of our memfd at an address the kernel picks; it replaces
    // nothing. The offset is page-aligned and inside the file (the frame was allocated).
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            PAGE_SIZE,
            prot(writable),
            libc::MAP_SHARED,
            file.as_raw_fd(),
            off,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        Some(p as usize)
    }
}

/// Unmap `[addr, addr + len)`, a range this crate mapped and whose owner gave it up.
pub(crate) fn unmap(addr: usize, len: usize) {
    // SAFETY: the range was created by this module (reserve/map_frames_at/map_one) and the
    // caller consumed the PageRun/Mapping that described it, so no live handle refers to it.
    // munmap cannot fail for a valid page-aligned range; if it did, the range stays mapped
    // (a leak, not unsoundness), so the result is ignored.
    unsafe {
        libc::munmap(addr as *mut libc::c_void, len);
    }
}

/// Replace `[addr, addr + len)` (a range this crate mapped) by fresh zero anonymous memory
/// with the same protection. Used when a domain is destroyed: code still running "in" the dead
/// domain keeps valid memory at its addresses, but no longer reaches the frames, which can
/// then be recycled.
pub(crate) fn replace_with_anon(addr: usize, len: usize, writable: bool) {
    // SAFETY: the range was mapped by this module and is still tracked by the simulator;
    // MAP_FIXED atomically swaps the pages, so concurrent accesses see either the old or the
    // new page and never an unmapped hole. On failure the old mapping stays (frames are then
    // kept alive by it; harmless).
    unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot(writable),
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        );
    }
}

/// Drop the contents of `frame` (it reads as zeros afterwards and costs no memory).
/// Returns false if the file system refused (the caller then zeroes it by writing).
pub(crate) fn punch_hole(file: &File, frame: XenPfn) -> bool {
    let Some(off) = frame_offset(frame) else {
        return false;
    };
    // SAFETY: fallocate only operates on our own descriptor; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            PAGE_SIZE as libc::off_t,
        )
    };
    rc == 0
}

/// The hypervisor's own view of machine memory: the whole memfd mapped once, shared and
/// writable, over `max_frames` pages of address space (most of it past the file's current end,
/// never touched until the file has grown over it). Grant copy goes through it, so a copy is
/// one `memmove` and no system call, as a hypervisor's direct map makes it.
pub(crate) struct DirectMap {
    base: usize,
    len: usize,
}

impl DirectMap {
    pub(crate) fn new(file: &File, max_frames: u64) -> Option<DirectMap> {
        let len = usize::try_from(max_frames.checked_mul(PAGE_SIZE as u64)?).ok()?;
        // SAFETY: a new shared mapping of our memfd at an address the kernel picks; it
        // replaces nothing. MAP_NORESERVE: only address space is taken. Pages past the end of
        // the file are never accessed (`copy` checks against the file's length).
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(DirectMap {
            base: p as usize,
            len,
        })
    }

    /// Copy `len` bytes of machine memory from byte offset `src` to `dst`; `file_len` is the
    /// memfd's current length. False (nothing copied) if either range is outside the file.
    pub(crate) fn copy(&self, src: usize, dst: usize, len: usize, file_len: usize) -> bool {
        let limit = file_len.min(self.len);
        let inside = |off: usize| off.checked_add(len).is_some_and(|end| end <= limit);
        if !inside(src) || !inside(dst) {
            return false;
        }
        // SAFETY: both ranges lie inside the file and inside our mapping (checked above), and
        // the mapping lives as long as `self`. The memory is shared with domains that may
        // write it concurrently (as on Xen, a racing guest sees torn data); raw pointers and
        // `ptr::copy` (memmove: a copy within one frame may overlap) form no Rust references.
        unsafe {
            ptr::copy(
                (self.base + src) as *const u8,
                (self.base + dst) as *mut u8,
                len,
            )
        };
        true
    }
}

impl Drop for DirectMap {
    fn drop(&mut self) {
        unmap(self.base, self.len);
    }
}
