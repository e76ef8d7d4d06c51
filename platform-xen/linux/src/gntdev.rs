//! [`GrantMapper`] over `/dev/xen/gntdev`.
//!
//! * map: `IOCTL_GNTDEV_MAP_GRANT_REF` with the refs (one call for a whole multi-page ring)
//!   reserves a range of the file and returns its offset (`index`); `mmap` of that range,
//!   `MAP_SHARED`, is what maps the pages (the driver makes the map hypercalls then, read-only
//!   when the mapping is not `PROT_WRITE`), so a ref that cannot be mapped fails the `mmap`.
//! * unmap: `munmap`, then `IOCTL_GNTDEV_UNMAP_GRANT_REF` to give the range of the file back.
//! * copy: `IOCTL_GNTDEV_GRANT_COPY`, one call for all the operations; see
//!   [`LinuxXen::copy_frame`] for what a local frame is here.
//!
//! The platform remembers each live mapping (address → file range), so that an unmap names
//! what it unmaps, and a [`Mapping`] that is not ours is refused rather than unmapped.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;

use xen_platform::abi::grant_table::{GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use xen_platform::abi::GrantHandle;
use xen_platform::{
    CopyPtr, DomId, Error, GrantCopy, GrantMapper, GrantRef, Mapping, MultiMapping, Result,
    MAX_MULTI_MAP, PAGE_SIZE,
};

use crate::abi::{
    GntdevCopyForeign, GntdevCopyPtr, IoctlGntdevGrantCopy, IoctlGntdevGrantCopySegment,
    IoctlGntdevGrantRef, IoctlGntdevMapGrantRef, IoctlGntdevUnmapGrantRef, IOCTL_GNTDEV_GRANT_COPY,
    IOCTL_GNTDEV_MAP_GRANT_REF, IOCTL_GNTDEV_UNMAP_GRANT_REF,
};
use crate::pages::Runs;
use crate::sys::{error_from_io, ioctl, lock};
use crate::LinuxXen;

/// A live mapping: where the driver's file range is and how many pages it has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapInfo {
    index: u64,
    pages: usize,
}

/// Live mappings by address.
pub(crate) type Maps = HashMap<usize, MapInfo>;

impl LinuxXen {
    /// Map `refs` of `domid` at consecutive addresses: the address and the file offset.
    fn map_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        readonly: bool,
    ) -> Result<(NonNull<u8>, u64)> {
        if refs.is_empty() || refs.len() > MAX_MULTI_MAP {
            return Err(Error::Invalid);
        }
        let mut arg = IoctlGntdevMapGrantRef::<MAX_MULTI_MAP> {
            count: refs.len() as u32,
            ..Default::default()
        };
        for (slot, &gref) in arg.refs.iter_mut().zip(refs) {
            *slot = IoctlGntdevGrantRef {
                domid: domid.into(),
                ref_: gref,
            };
        }
        // SAFETY: a map argument with `count` refs (the header of the C struct followed by
        // room for MAX_MULTI_MAP refs), alive and writable across the call.
        unsafe { ioctl(self.gntdev.as_fd(), IOCTL_GNTDEV_MAP_GRANT_REF, &mut arg) }
            .map_err(|e| error_from_io(&e))?;
        let index = arg.index;
        let len = refs.len() * PAGE_SIZE;
        let prot = if readonly {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let Ok(offset) = libc::off_t::try_from(index) else {
            let _ = self.release_range(index, refs.len());
            return Err(Error::Invalid);
        };
        // SAFETY: a new mapping at an address the kernel picks (no existing memory is
        // affected) of the file range the map ioctl just reserved for us.
        let addr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                self.gntdev.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // All or nothing: give the file range back.
            let _ = self.release_range(index, refs.len());
            return Err(error_from_io(&e));
        }
        let Some(addr) = NonNull::new(addr.cast::<u8>()) else {
            // mmap never returns address 0 without MAP_FIXED; refuse it rather than trust it.
            // SAFETY: unmaps exactly the mapping just made, which nothing else uses.
            unsafe { libc::munmap(addr, len) };
            let _ = self.release_range(index, refs.len());
            return Err(Error::Invalid);
        };
        lock(&self.maps).insert(
            addr.as_ptr() as usize,
            MapInfo {
                index,
                pages: refs.len(),
            },
        );
        Ok((addr, index))
    }

    /// `IOCTL_GNTDEV_UNMAP_GRANT_REF` of a range nothing maps any more (best effort: on error
    /// the range stays reserved until the file is closed).
    fn release_range(&self, index: u64, pages: usize) -> Result<()> {
        let mut arg = IoctlGntdevUnmapGrantRef {
            index,
            count: pages as u32,
            pad: 0,
        };
        // SAFETY: the argument type of IOCTL_GNTDEV_UNMAP_GRANT_REF, alive across the call.
        unsafe { ioctl(self.gntdev.as_fd(), IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut arg) }
            .map(drop)
            .map_err(|e| error_from_io(&e))
    }

    /// Unmap what [`LinuxXen::map_refs`] mapped at `addr` (`pages` pages).
    fn unmap_refs(&self, addr: NonNull<u8>, pages: usize) -> Result<()> {
        let mut maps = lock(&self.maps);
        let key = addr.as_ptr() as usize;
        let info = *maps.get(&key).ok_or(Error::NotFound)?;
        if info.pages != pages {
            return Err(Error::Invalid);
        }
        // SAFETY: `addr` is the start of a live mapping of ours of exactly `pages` pages
        // (recorded when it was made); the caller gave up its Mapping, so nothing uses it.
        if unsafe { libc::munmap(addr.as_ptr().cast(), pages * PAGE_SIZE) } != 0 {
            return Err(error_from_io(&io::Error::last_os_error()));
        }
        maps.remove(&key);
        drop(maps);
        self.release_range(info.index, info.pages)
    }

    /// The frame to name a page of ours in a [`GrantCopy`] on this platform.
    ///
    /// `IOCTL_GNTDEV_GRANT_COPY` names local memory by virtual address (the driver pins the
    /// page and finds its frame), and a Linux process has no business with frame numbers, so
    /// [`Pages::frame`](xen_platform::Pages::frame) is unsupported here. A
    /// [`CopyPtr::Local`] on this platform instead carries the *virtual page number* (address
    /// `>> 12`) of a page of a live [`PageRun`](xen_platform::PageRun) from
    /// [`Pages::alloc`](xen_platform::Pages::alloc), which this returns for a page-aligned
    /// `addr` in one. [`GrantMapper::copy`] checks every local side against the live runs,
    /// so a copy never reaches other memory.
    pub fn copy_frame(&self, addr: NonNull<u8>) -> Result<u64> {
        let a = addr.as_ptr() as usize;
        if !a.is_multiple_of(PAGE_SIZE) || !lock(&self.runs).contains(a, PAGE_SIZE) {
            return Err(Error::Invalid);
        }
        Ok((a / PAGE_SIZE) as u64)
    }
}

/// The local address a [`CopyPtr::Local`] side of `len` bytes names, if it is inside a live
/// run of ours and inside one page.
fn local_addr(runs: &Runs, frame: u64, offset: u16, len: u16) -> Option<usize> {
    if usize::from(offset) + usize::from(len) > PAGE_SIZE {
        return None;
    }
    let page = usize::try_from(frame).ok()?.checked_mul(PAGE_SIZE)?;
    let addr = page + usize::from(offset);
    runs.contains(addr, usize::from(len)).then_some(addr)
}

/// The union member and flag for one side of a copy, or `None` if the side is invalid.
fn side(runs: &Runs, p: CopyPtr, len: u16, gref_flag: u16) -> Option<(GntdevCopyPtr, u16)> {
    match p {
        CopyPtr::Foreign {
            domid,
            gref,
            offset,
        } => {
            if usize::from(offset) + usize::from(len) > PAGE_SIZE {
                return None;
            }
            let foreign = GntdevCopyForeign {
                ref_: gref,
                offset,
                domid,
            };
            Some((GntdevCopyPtr { foreign }, gref_flag))
        }
        CopyPtr::Local { frame, offset } => {
            let addr = local_addr(runs, frame, offset, len)?;
            let virt = addr as *mut core::ffi::c_void;
            Some((GntdevCopyPtr { virt }, 0))
        }
    }
}

impl GrantMapper for LinuxXen {
    fn map(&self, domid: DomId, gref: GrantRef, readonly: bool) -> Result<Mapping> {
        let (addr, index) = self.map_refs(domid, &[gref], readonly)?;
        Ok(Mapping {
            addr,
            // gntdev has no grant handles; the page's index in the file stands in (the
            // platform unmaps by address).
            handle: (index / PAGE_SIZE as u64) as GrantHandle,
            domid,
            gref,
            readonly,
        })
    }

    fn unmap(&self, mapping: Mapping) -> Result<()> {
        self.unmap_refs(mapping.addr, 1)
    }

    fn map_multi(&self, domid: DomId, refs: &[GrantRef], readonly: bool) -> Result<MultiMapping> {
        let (addr, index) = self.map_refs(domid, refs, readonly)?;
        let mut handles = [0; MAX_MULTI_MAP];
        let first = index / PAGE_SIZE as u64;
        for (i, h) in handles.iter_mut().enumerate().take(refs.len()) {
            *h = (first + i as u64) as GrantHandle;
        }
        Ok(MultiMapping {
            addr,
            pages: refs.len(),
            handles,
            domid,
            readonly,
        })
    }

    fn unmap_multi(&self, mapping: MultiMapping) -> Result<()> {
        self.unmap_refs(mapping.addr, mapping.pages)
    }

    /// `IOCTL_GNTDEV_GRANT_COPY` of every valid operation in one call. A local side is a
    /// [`LinuxXen::copy_frame`] of a live page run; an operation whose local side is not in
    /// one, or that crosses a page, gets `Invalid` without reaching the driver (which would
    /// fail the whole call). Local-to-local operations (which the driver refuses) are copied
    /// here. If the call itself fails, every operation it carried gets its error, and so does
    /// the return value.
    fn copy(&self, ops: &[GrantCopy], status: &mut [Result<()>]) -> Result<()> {
        if status.len() < ops.len() {
            return Err(Error::Invalid);
        }
        // Held across the call: no run is freed (and its addresses reused) while the driver
        // copies into it.
        let runs = lock(&self.runs);
        let (mut segs, carried) = prepare_copy(&runs, ops, status);
        if segs.is_empty() {
            return Ok(());
        }
        let Ok(count) = u32::try_from(segs.len()) else {
            for &i in &carried {
                status[i] = Err(Error::Invalid);
            }
            return Err(Error::Invalid);
        };
        let mut arg = IoctlGntdevGrantCopy {
            count,
            _pad0: [0; 4],
            segments: segs.as_mut_ptr(),
        };
        // SAFETY: `arg` names `count` segments in `segs`, alive and writable across the call.
        // Every foreign side is a grant the hypervisor checks; every local side is `len`
        // bytes of a live run of ours, inside one page, which the lock keeps alive.
        let r = unsafe { ioctl(self.gntdev.as_fd(), IOCTL_GNTDEV_GRANT_COPY, &mut arg) };
        drop(runs);
        if let Err(e) = r {
            let err = error_from_io(&e);
            for &i in &carried {
                status[i] = Err(err);
            }
            return Err(err);
        }
        for (seg, &i) in segs.iter().zip(&carried) {
            status[i] = match seg.status {
                0 => Ok(()),
                s => Err(Error::from_gntst(s)),
            };
        }
        Ok(())
    }
}

/// The driver's segments for the `ops` it is to carry, and which op each is. Ops that are
/// invalid here get `Invalid` in `status`; local-to-local ops are done at once (`Ok`).
fn prepare_copy(
    runs: &Runs,
    ops: &[GrantCopy],
    status: &mut [Result<()>],
) -> (Vec<IoctlGntdevGrantCopySegment>, Vec<usize>) {
    let mut segs = Vec::with_capacity(ops.len());
    let mut carried = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let (Some((source, sf)), Some((dest, df))) = (
            side(runs, op.source, op.len, GNTCOPY_SOURCE_GREF),
            side(runs, op.dest, op.len, GNTCOPY_DEST_GREF),
        ) else {
            status[i] = Err(Error::Invalid);
            continue;
        };
        if sf | df == 0 {
            // SAFETY: both sides are `len` bytes inside live runs of ours (checked by `side`),
            // which the caller's lock of `runs` keeps alive; `copy` allows them to overlap.
            unsafe {
                core::ptr::copy(
                    source.virt.cast::<u8>(),
                    dest.virt.cast::<u8>(),
                    usize::from(op.len),
                )
            };
            status[i] = Ok(());
            continue;
        }
        segs.push(IoctlGntdevGrantCopySegment {
            source,
            dest,
            len: op.len,
            flags: sf | df,
            status: 0,
            _pad0: [0; 2],
        });
        carried.push(i);
    }
    (segs, carried)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::{alloc_run, free_run};
    use std::sync::Mutex;

    #[test]
    fn copy_ops_become_segments() {
        let runs = Mutex::new(Runs::default());
        let run = alloc_run(&runs, 2).unwrap();
        let base = run.addr.as_ptr() as usize;
        let vpn = (base / PAGE_SIZE) as u64;
        // SAFETY: two pages of ours, valid until freed below.
        unsafe { run.addr.as_ptr().add(10).write_bytes(0x5a, 4) };
        let foreign = |offset| CopyPtr::Foreign {
            domid: 7,
            gref: 33,
            offset,
        };
        let local = |page: u64, offset| CopyPtr::Local {
            frame: vpn + page,
            offset,
        };
        let ops = [
            // 0: foreign -> our second page
            GrantCopy {
                source: foreign(8),
                dest: local(1, 100),
                len: 512,
            },
            // 1: our first page -> foreign
            GrantCopy {
                source: local(0, 0),
                dest: foreign(0),
                len: 4096,
            },
            // 2: local -> local, done here
            GrantCopy {
                source: local(0, 10),
                dest: local(1, 4000),
                len: 4,
            },
            // 3: a page that is not ours
            GrantCopy {
                source: foreign(0),
                dest: local(2, 0),
                len: 1,
            },
            // 4: crosses the end of the foreign page
            GrantCopy {
                source: foreign(4000),
                dest: local(0, 0),
                len: 97,
            },
            // 5: crosses the end of a local page (though the run goes on)
            GrantCopy {
                source: foreign(0),
                dest: local(0, 4000),
                len: 97,
            },
            // 6: foreign -> foreign
            GrantCopy {
                source: foreign(0),
                dest: foreign(2048),
                len: 2048,
            },
        ];
        let mut status = [Err(Error::Busy); 7];
        let (segs, carried) = prepare_copy(&lock(&runs), &ops, &mut status);
        assert_eq!(carried, [0, 1, 6]);
        assert_eq!(status[2], Ok(()));
        assert_eq!(status[3], Err(Error::Invalid));
        assert_eq!(status[4], Err(Error::Invalid));
        assert_eq!(status[5], Err(Error::Invalid));
        for i in [0, 1, 6] {
            assert_eq!(status[i], Err(Error::Busy), "op {i} is left to the driver");
        }
        // SAFETY: reads 4 bytes of the run's second page.
        let copied = unsafe { core::slice::from_raw_parts(run.page(1).as_ptr().add(4000), 4) };
        assert_eq!(copied, [0x5a; 4]);

        assert_eq!(segs[0].flags, GNTCOPY_SOURCE_GREF);
        assert_eq!(segs[0].len, 512);
        // SAFETY: the flags say which union member each side holds.
        unsafe {
            assert_eq!(
                segs[0].source.foreign,
                GntdevCopyForeign {
                    ref_: 33,
                    offset: 8,
                    domid: 7
                }
            );
            assert_eq!(segs[0].dest.virt as usize, base + PAGE_SIZE + 100);
            assert_eq!(segs[1].source.virt as usize, base);
            assert_eq!(segs[1].dest.foreign.offset, 0);
            assert_eq!(segs[2].dest.foreign.offset, 2048);
        }
        assert_eq!(segs[1].flags, GNTCOPY_DEST_GREF);
        assert_eq!(segs[2].flags, GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF);
        free_run(&runs, run).unwrap();

        // Freed: the same local side is refused.
        let mut status = [Ok(())];
        let (segs, _) = prepare_copy(&lock(&runs), &ops[..1], &mut status);
        assert!(segs.is_empty());
        assert_eq!(status[0], Err(Error::Invalid));
    }
}
