//! `xen_platform_linux::abi` (Linux's `/dev/xen/evtchn` and `/dev/xen/gntdev` interfaces:
//! xen/sys/evtchn.h, xen/sys/gntdev.h, and the `_IOC` encoding of asm-generic/ioctl.h) against
//! the installed C headers: every ioctl number, struct size and field offset it mirrors.

use abi_oracle::{c_usize, check_consts, check_struct, check_union, Checker};
use xen_platform_linux::abi::*;

// The `_IOC` encoding applied to sample values, for `check_consts!` (which takes paths).
const IOC_SAMPLE_IOWR: u32 = ioc(IOC_READ | IOC_WRITE, b'x', 0xff, 0x3fff);
const IOC_SAMPLE_IOR: u32 = ioc(IOC_READ, 0x12, 114, 8);
const IOC_SAMPLE_IOW: u32 = ioc(IOC_WRITE, b'f', 2, 8);

#[test]
fn ioctl_h() {
    let c = &mut Checker::new("asm-generic/ioctl.h (_IOC)");
    check_consts!(c, {
        IOC_NRBITS = _IOC_NRBITS,
        IOC_TYPEBITS = _IOC_TYPEBITS,
        IOC_SIZEBITS = _IOC_SIZEBITS,
        IOC_DIRBITS = _IOC_DIRBITS,
        IOC_NRSHIFT = _IOC_NRSHIFT,
        IOC_TYPESHIFT = _IOC_TYPESHIFT,
        IOC_SIZESHIFT = _IOC_SIZESHIFT,
        IOC_DIRSHIFT = _IOC_DIRSHIFT,
        IOC_NONE = _IOC_NONE,
        IOC_WRITE = _IOC_WRITE,
        IOC_READ = _IOC_READ,
        IOC_SAMPLE_IOWR = IOC_SAMPLE_IOWR,
        IOC_SAMPLE_IOR = IOC_SAMPLE_IOR,
        IOC_SAMPLE_IOW = IOC_SAMPLE_IOW,
    });
    c.finish();
}

#[test]
fn evtchn_h() {
    let c = &mut Checker::new("xen/sys/evtchn.h");
    check_struct!(
        c,
        IoctlEvtchnBindInterdomain = ioctl_evtchn_bind_interdomain {
            remote_domain,
            remote_port,
        }
    );
    check_struct!(
        c,
        IoctlEvtchnBindUnboundPort = ioctl_evtchn_bind_unbound_port { remote_domain }
    );
    check_struct!(c, IoctlEvtchnUnbind = ioctl_evtchn_unbind { port });
    check_struct!(c, IoctlEvtchnNotify = ioctl_evtchn_notify { port });
    check_consts!(c, {
        IOCTL_EVTCHN_BIND_INTERDOMAIN = IOCTL_EVTCHN_BIND_INTERDOMAIN,
        IOCTL_EVTCHN_BIND_UNBOUND_PORT = IOCTL_EVTCHN_BIND_UNBOUND_PORT,
        IOCTL_EVTCHN_UNBIND = IOCTL_EVTCHN_UNBIND,
        IOCTL_EVTCHN_NOTIFY = IOCTL_EVTCHN_NOTIFY,
        IOCTL_EVTCHN_RESET = IOCTL_EVTCHN_RESET,
    });
    c.finish();
}

#[test]
fn gntdev_h() {
    let c = &mut Checker::new("xen/sys/gntdev.h");
    check_struct!(c, IoctlGntdevGrantRef = ioctl_gntdev_grant_ref { domid, ref_ => ref });
    // The C type, with its one-element `refs` (N = 1, the size in the ioctl number).
    check_struct!(
        c,
        IoctlGntdevMapGrantRef = ioctl_gntdev_map_grant_ref {
            count,
            pad,
            index,
            refs,
        }
    );
    check_struct!(
        c,
        IoctlGntdevUnmapGrantRef = ioctl_gntdev_unmap_grant_ref { index, count, pad }
    );
    check_union!(c, GntdevCopyPtr = gntdev_copy_ptr { virt, foreign });
    check_struct!(c, GntdevCopyForeign = gntdev_copy_foreign {
        ref_ => ref, offset, domid,
    });
    check_struct!(c, IoctlGntdevGrantCopySegment = ioctl_gntdev_grant_copy_segment {
        source, dest, len, flags, status,
    } pad { _pad0 });
    c.eq(
        "ioctl_gntdev_grant_copy_segment: dest has source's union type",
        1,
        c_usize!("xo_gntdev_dest_is_source_type") as i128,
    );
    check_struct!(c, IoctlGntdevGrantCopy = ioctl_gntdev_grant_copy {
        count, segments,
    } pad { _pad0 });
    check_consts!(c, {
        IOCTL_GNTDEV_MAP_GRANT_REF = IOCTL_GNTDEV_MAP_GRANT_REF,
        IOCTL_GNTDEV_UNMAP_GRANT_REF = IOCTL_GNTDEV_UNMAP_GRANT_REF,
        IOCTL_GNTDEV_GRANT_COPY = IOCTL_GNTDEV_GRANT_COPY,
    });

    // The mapper's many-ref argument keeps the C header: refs start where C's do, and each
    // further ref follows at sizeof(struct ioctl_gntdev_grant_ref).
    type Map16 = IoctlGntdevMapGrantRef<16>;
    c.eq(
        "offsetof(ioctl_gntdev_map_grant_ref, refs) vs IoctlGntdevMapGrantRef<16>.refs",
        core::mem::offset_of!(Map16, refs) as i128,
        c_usize!("xo_off_ioctl_gntdev_map_grant_ref__refs") as i128,
    );
    c.eq(
        "offsetof(ioctl_gntdev_map_grant_ref, index) vs IoctlGntdevMapGrantRef<16>.index",
        core::mem::offset_of!(Map16, index) as i128,
        c_usize!("xo_off_ioctl_gntdev_map_grant_ref__index") as i128,
    );
    c.eq(
        "sizeof(ioctl_gntdev_map_grant_ref) + 15 refs vs size_of::<IoctlGntdevMapGrantRef<16>>()",
        core::mem::size_of::<Map16>() as i128,
        (c_usize!("xo_size_ioctl_gntdev_map_grant_ref")
            + 15 * c_usize!("xo_size_ioctl_gntdev_grant_ref")) as i128,
    );
    c.finish();
}
