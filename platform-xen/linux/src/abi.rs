//! `#[repr(C)]` mirrors of Linux's Xen device ABI, x86_64: `xen/sys/evtchn.h` (the
//! `/dev/xen/evtchn` ioctls) and `xen/sys/gntdev.h` (the `/dev/xen/gntdev` ioctls), with the
//! `_IOC` encoding of `asm-generic/ioctl.h` the ioctl numbers are built with.
//!
//! Every ioctl number, struct size and field offset here is compared with the installed C
//! headers by `ci/abi-oracle` (`tests/linux.rs`). Only what this crate uses is mirrored.
//! Implicit C padding is spelled out as `_padN` fields.

use core::ffi::{c_uint, c_void};
use core::mem::size_of;

// ------------------------------------------------------------------ _IOC (asm-generic/ioctl.h)

/// `_IOC_NRBITS`.
pub const IOC_NRBITS: u32 = 8;
/// `_IOC_TYPEBITS`.
pub const IOC_TYPEBITS: u32 = 8;
/// `_IOC_SIZEBITS` (x86 uses the generic 14).
pub const IOC_SIZEBITS: u32 = 14;
/// `_IOC_DIRBITS`.
pub const IOC_DIRBITS: u32 = 2;
/// `_IOC_NRSHIFT`.
pub const IOC_NRSHIFT: u32 = 0;
/// `_IOC_TYPESHIFT`.
pub const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
/// `_IOC_SIZESHIFT`.
pub const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
/// `_IOC_DIRSHIFT`.
pub const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
/// `_IOC_NONE`: the Xen device ioctls all use it (whatever data moves through the argument).
pub const IOC_NONE: u32 = 0;
/// `_IOC_WRITE`.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`. Panics (at compile time, in a `const`) if a field does not fit.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(dir < 1 << IOC_DIRBITS, "_IOC: direction out of range");
    assert!(size < 1 << IOC_SIZEBITS, "_IOC: argument size out of range");
    (dir << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

// ------------------------------------------------------------------ xen/sys/evtchn.h

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoctlEvtchnBindInterdomain {
    /// The peer domain.
    pub remote_domain: c_uint,
    /// The peer's unbound port allocated for us.
    pub remote_port: c_uint,
}

/// `struct ioctl_evtchn_bind_unbound_port`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoctlEvtchnBindUnboundPort {
    /// The domain that may bind to the new port.
    pub remote_domain: c_uint,
}

/// `struct ioctl_evtchn_unbind`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoctlEvtchnUnbind {
    /// A local port bound through this file.
    pub port: c_uint,
}

/// `struct ioctl_evtchn_notify`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoctlEvtchnNotify {
    /// A local port bound through this file.
    pub port: c_uint,
}

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: returns the new local port.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u32 =
    ioc(IOC_NONE, b'E', 1, size_of::<IoctlEvtchnBindInterdomain>());
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: returns the new local port.
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u32 =
    ioc(IOC_NONE, b'E', 2, size_of::<IoctlEvtchnBindUnboundPort>());
/// `IOCTL_EVTCHN_UNBIND`.
pub const IOCTL_EVTCHN_UNBIND: u32 = ioc(IOC_NONE, b'E', 3, size_of::<IoctlEvtchnUnbind>());
/// `IOCTL_EVTCHN_NOTIFY`.
pub const IOCTL_EVTCHN_NOTIFY: u32 = ioc(IOC_NONE, b'E', 4, size_of::<IoctlEvtchnNotify>());
/// `IOCTL_EVTCHN_RESET`: empty the delivery ring and clear its overflow condition.
pub const IOCTL_EVTCHN_RESET: u32 = ioc(IOC_NONE, b'E', 5, 0);

// ------------------------------------------------------------------ xen/sys/gntdev.h

/// `struct ioctl_gntdev_grant_ref`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoctlGntdevGrantRef {
    /// The granting domain.
    pub domid: u32,
    /// The grant reference.
    pub ref_: u32,
}

/// `struct ioctl_gntdev_map_grant_ref`, whose C declaration ends in `refs[1]` and which the
/// caller extends with `count - 1` more refs. `N` is the number of refs this value has room
/// for: the default `N = 1` is the C type (its size is in the ioctl number); the mapper uses a
/// larger `N` for one multi-page call. The header (`count`, `pad`, `index`) is the same for
/// every `N`, and `refs` starts at the same offset.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoctlGntdevMapGrantRef<const N: usize = 1> {
    /// IN: number of refs to map.
    pub count: u32,
    /// Padding the C struct names.
    pub pad: u32,
    /// OUT: the offset to pass to `mmap` (page-aligned; `count` pages from there).
    pub index: u64,
    /// IN: the refs (`count` of them are read).
    pub refs: [IoctlGntdevGrantRef; N],
}

impl<const N: usize> Default for IoctlGntdevMapGrantRef<N> {
    fn default() -> Self {
        Self {
            count: 0,
            pad: 0,
            index: 0,
            refs: [IoctlGntdevGrantRef::default(); N],
        }
    }
}

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoctlGntdevUnmapGrantRef {
    /// The `index` the map returned.
    pub index: u64,
    /// Number of pages (all those of the map).
    pub count: u32,
    /// Padding the C struct names.
    pub pad: u32,
}

/// `foreign` member of `struct ioctl_gntdev_grant_copy_segment`'s `source`/`dest` unions.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GntdevCopyForeign {
    /// The grant reference.
    pub ref_: u32,
    /// Byte offset in the granted page.
    pub offset: u16,
    /// The granting domain.
    pub domid: u16,
}

/// The anonymous union of `source`/`dest` in `struct ioctl_gntdev_grant_copy_segment`: a
/// virtual address of ours (`virt`) unless the segment's flags say it is a grant (`foreign`).
#[repr(C)]
#[derive(Clone, Copy)]
pub union GntdevCopyPtr {
    /// A local buffer (any address; the kernel pins the page behind it).
    pub virt: *mut c_void,
    /// A foreign granted page.
    pub foreign: GntdevCopyForeign,
}

impl core::fmt::Debug for GntdevCopyPtr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Which member is live depends on the segment's flags, which the union does not see.
        f.write_str("GntdevCopyPtr { .. }")
    }
}

/// `struct ioctl_gntdev_grant_copy_segment`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IoctlGntdevGrantCopySegment {
    /// Where the bytes come from (`foreign` if `flags` has `GNTCOPY_source_gref`).
    pub source: GntdevCopyPtr,
    /// Where they go (`foreign` if `flags` has `GNTCOPY_dest_gref`).
    pub dest: GntdevCopyPtr,
    /// Number of bytes.
    pub len: u16,
    /// `GNTCOPY_source_gref` | `GNTCOPY_dest_gref` (xen/grant_table.h).
    pub flags: u16,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
}

/// `struct ioctl_gntdev_grant_copy`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IoctlGntdevGrantCopy {
    /// Number of segments.
    pub count: c_uint,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 4],
    /// `count` segments.
    pub segments: *mut IoctlGntdevGrantCopySegment,
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub const IOCTL_GNTDEV_MAP_GRANT_REF: u32 =
    ioc(IOC_NONE, b'G', 0, size_of::<IoctlGntdevMapGrantRef>());
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: u32 =
    ioc(IOC_NONE, b'G', 1, size_of::<IoctlGntdevUnmapGrantRef>());
/// `IOCTL_GNTDEV_GRANT_COPY`.
pub const IOCTL_GNTDEV_GRANT_COPY: u32 = ioc(IOC_NONE, b'G', 8, size_of::<IoctlGntdevGrantCopy>());

// A map argument with room for more refs keeps the C header: the kernel reads `count` refs
// from the offset of `refs`.
const _: () = {
    use core::mem::offset_of;
    assert!(
        offset_of!(IoctlGntdevMapGrantRef<16>, refs) == offset_of!(IoctlGntdevMapGrantRef, refs)
    );
    assert!(
        offset_of!(IoctlGntdevMapGrantRef<16>, index) == offset_of!(IoctlGntdevMapGrantRef, index)
    );
    assert!(size_of::<IoctlGntdevMapGrantRef<16>>() == 16 + 16 * size_of::<IoctlGntdevGrantRef>());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioc_encoding_matches_known_numbers() {
        // Numbers of well-known ioctls, written out by hand from the _IOC layout
        // (dir:2 | size:14 | type:8 | nr:8).
        // BLKGETSIZE64 = _IOR(0x12, 114, size_t).
        assert_eq!(ioc(IOC_READ, 0x12, 114, 8), 0x8008_1272);
        // FS_IOC_SETFLAGS = _IOW('f', 2, long).
        assert_eq!(ioc(IOC_WRITE, b'f', 2, 8), 0x4008_6602);
        // _IOWR: both direction bits.
        assert_eq!(ioc(IOC_READ | IOC_WRITE, b'x', 0xff, 0x3fff), 0xffff_78ff);
        assert_eq!(ioc(IOC_NONE, 0, 0, 0), 0);
    }

    #[test]
    fn evtchn_numbers() {
        // _IOC(_IOC_NONE, 'E', nr, sizeof(struct ...)): size << 16 | 'E' (0x45) << 8 | nr.
        assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x0008_4501);
        assert_eq!(IOCTL_EVTCHN_BIND_UNBOUND_PORT, 0x0004_4502);
        assert_eq!(IOCTL_EVTCHN_UNBIND, 0x0004_4503);
        assert_eq!(IOCTL_EVTCHN_NOTIFY, 0x0004_4504);
        assert_eq!(IOCTL_EVTCHN_RESET, 0x0000_4505);
    }

    #[test]
    fn gntdev_numbers() {
        // 'G' = 0x47; map_grant_ref is 24 bytes (16 of header + one 8-byte ref), unmap 16,
        // grant_copy 16 (count, 4 bytes of padding, a pointer).
        assert_eq!(IOCTL_GNTDEV_MAP_GRANT_REF, 0x0018_4700);
        assert_eq!(IOCTL_GNTDEV_UNMAP_GRANT_REF, 0x0010_4701);
        assert_eq!(IOCTL_GNTDEV_GRANT_COPY, 0x0010_4708);
    }

    #[test]
    fn layouts() {
        assert_eq!(size_of::<IoctlGntdevGrantCopySegment>(), 24);
        assert_eq!(core::mem::offset_of!(IoctlGntdevGrantCopySegment, dest), 8);
        assert_eq!(
            core::mem::offset_of!(IoctlGntdevGrantCopySegment, status),
            20
        );
        assert_eq!(size_of::<GntdevCopyPtr>(), 8);
        assert_eq!(core::mem::offset_of!(IoctlGntdevGrantCopy, segments), 8);
    }
}
