//! [`Pages`]: anonymous private mappings of whole pages.
//!
//! `mmap(MAP_PRIVATE | MAP_ANONYMOUS)` gives page-aligned, zeroed memory; `free` is `munmap`.
//! The platform remembers the live runs, so that `free` only unmaps what `alloc` mapped and a
//! grant copy's local side can be checked against them ([`LinuxXen::copy_frame`]).
//! [`Pages::frame`] is unsupported: a backend never grants its own pages.

use std::collections::BTreeMap;
use std::io;
use std::ptr::NonNull;
use std::sync::Mutex;

use xen_platform::{Error, PageRun, Pages, Result, XenPfn, PAGE_SIZE};

use crate::sys::{error_from_io, lock};
use crate::LinuxXen;

/// The live page runs: start address → length in bytes.
#[derive(Debug, Default)]
pub(crate) struct Runs(BTreeMap<usize, usize>);

impl Runs {
    /// Whether `[addr, addr + len)` lies inside one live run.
    pub(crate) fn contains(&self, addr: usize, len: usize) -> bool {
        let Some((&start, &bytes)) = self.0.range(..=addr).next_back() else {
            return false;
        };
        match (addr.checked_add(len), start.checked_add(bytes)) {
            (Some(end), Some(run_end)) => addr < run_end && end <= run_end,
            _ => false,
        }
    }
}

/// [`Pages::alloc`] on a table of runs.
pub(crate) fn alloc_run(runs: &Mutex<Runs>, pages: usize) -> Result<PageRun> {
    if pages == 0 {
        return Err(Error::Invalid);
    }
    let len = pages.checked_mul(PAGE_SIZE).ok_or(Error::NoSpace)?;
    // SAFETY: a new anonymous mapping at an address the kernel picks; no existing memory is
    // affected.
    let addr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(Error::NoSpace);
    }
    let Some(addr) = NonNull::new(addr.cast::<u8>()) else {
        // Never happens without MAP_FIXED; refuse address 0 rather than trust it.
        // SAFETY: unmaps exactly the mapping just made, which nothing else uses.
        unsafe { libc::munmap(addr, len) };
        return Err(Error::NoSpace);
    };
    lock(runs).0.insert(addr.as_ptr() as usize, len);
    Ok(PageRun { addr, pages })
}

/// [`Pages::free`] on a table of runs: `Invalid` (and nothing unmapped) for a run the table
/// does not hold.
pub(crate) fn free_run(runs: &Mutex<Runs>, run: PageRun) -> Result<()> {
    let mut runs = lock(runs);
    let key = run.addr.as_ptr() as usize;
    if runs.0.get(&key) != Some(&run.len()) {
        return Err(Error::Invalid);
    }
    // SAFETY: exactly a live run of the table (checked above), whose PageRun the caller gave
    // up; the lock keeps a grant copy from using it meanwhile.
    if unsafe { libc::munmap(run.addr.as_ptr().cast(), run.len()) } != 0 {
        return Err(error_from_io(&io::Error::last_os_error()));
    }
    runs.0.remove(&key);
    Ok(())
}

impl Pages for LinuxXen {
    fn alloc(&self, pages: usize) -> Result<PageRun> {
        alloc_run(&self.runs, pages)
    }

    /// Fails with `Invalid` (and unmaps nothing) for a run this platform did not allocate.
    fn free(&self, run: PageRun) -> Result<()> {
        free_run(&self.runs, run)
    }

    /// Unsupported: a Linux process has no frame numbers to put in a grant, and a backend
    /// never grants. (For grant copies see [`LinuxXen::copy_frame`].)
    fn frame(&self, _addr: NonNull<u8>) -> Result<XenPfn> {
        Err(Error::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_contains() {
        let mut r = Runs::default();
        r.0.insert(0x10000, 2 * PAGE_SIZE);
        r.0.insert(0x20000, PAGE_SIZE);
        assert!(r.contains(0x10000, 2 * PAGE_SIZE));
        assert!(r.contains(0x11000, PAGE_SIZE));
        assert!(r.contains(0x11ff0, 0x10));
        assert!(!r.contains(0x11ff0, 0x11));
        assert!(!r.contains(0x12000, 0));
        assert!(!r.contains(0xf000, PAGE_SIZE));
        assert!(r.contains(0x20000, 1));
        assert!(!r.contains(0x21000, 1));
        assert!(!r.contains(usize::MAX - 1, 4));
    }

    #[test]
    fn alloc_and_free() {
        let runs = Mutex::new(Runs::default());
        assert_eq!(alloc_run(&runs, 0), Err(Error::Invalid));
        assert_eq!(alloc_run(&runs, usize::MAX), Err(Error::NoSpace));
        let run = alloc_run(&runs, 3).unwrap();
        let a = run.addr.as_ptr() as usize;
        assert_eq!(a % PAGE_SIZE, 0);
        assert_eq!(run.len(), 3 * PAGE_SIZE);
        assert!(lock(&runs).contains(a, 3 * PAGE_SIZE));
        // SAFETY: the run is 3 pages of ours, valid for reads and writes until freed.
        let bytes = unsafe { core::slice::from_raw_parts_mut(run.addr.as_ptr(), run.len()) };
        assert!(bytes.iter().all(|&b| b == 0), "pages are zeroed");
        bytes[3 * PAGE_SIZE - 1] = 0xa5;
        // A run the table does not hold is refused, and the real one stays mapped.
        let other = PageRun {
            addr: run.page(1),
            pages: 1,
        };
        assert_eq!(free_run(&runs, other), Err(Error::Invalid));
        let short = PageRun {
            addr: run.addr,
            pages: 2,
        };
        assert_eq!(free_run(&runs, short), Err(Error::Invalid));
        assert_eq!(bytes[3 * PAGE_SIZE - 1], 0xa5);
        free_run(&runs, run).unwrap();
        assert!(!lock(&runs).contains(a, 1));
    }
}
