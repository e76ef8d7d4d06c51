//! Errors a platform operation can return.
//!
//! Variants follow the Xen errno values (`xen/errno.h`) and grant-table status codes
//! (`GNTST_*` in `xen/grant_table.h`) that the real hypercalls return, so the real platform maps
//! hypercall results one to one and the simulator reports the same conditions.

use core::fmt;

/// A platform error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// EINVAL / GNTST_general_error: malformed argument (bad port, bad frame, bad ref).
    Invalid,
    /// EPERM / GNTST_permission_denied: the caller may not do this (mapping a ref not granted to
    /// it, writing through a read-only grant, binding a port reserved for another domain).
    PermissionDenied,
    /// ENOENT / GNTST_bad_gntref: no such object (grant ref not in use, port not allocated).
    NotFound,
    /// ESRCH / GNTST_bad_domain: no such domain, or it has been destroyed.
    NoSuchDomain,
    /// EBUSY: the object is in use (ending a grant the peer still maps, closing a port twice).
    Busy,
    /// ENOMEM / ENOSPC / GNTST_no_device_space: out of pages, grant entries or ports.
    NoSpace,
    /// The wait timed out before any of the ports became pending.
    Timeout,
    /// The peer is gone (its port was closed or its domain destroyed) while we were waiting.
    PeerGone,
    /// The shared ring is corrupt: the peer claims more entries than the ring holds.
    RingOverflow,
    /// The operation is not supported on this platform.
    Unsupported,
}

/// Shorthand for platform results.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// The negative Xen errno a hypercall would return for this condition.
    pub const fn xen_errno(self) -> i32 {
        match self {
            Error::Invalid => -22,         // EINVAL
            Error::PermissionDenied => -1, // EPERM
            Error::NotFound => -2,         // ENOENT
            Error::NoSuchDomain => -3,     // ESRCH
            Error::Busy => -16,            // EBUSY
            Error::NoSpace => -28,         // ENOSPC
            Error::Timeout => -110,        // ETIMEDOUT
            Error::PeerGone => -104,       // ECONNRESET
            Error::RingOverflow => -71,    // EPROTO
            Error::Unsupported => -38,     // ENOSYS
        }
    }

    /// Map a negative Xen errno (as returned by a hypercall) to an error.
    pub const fn from_xen_errno(rc: i32) -> Self {
        match rc {
            -1 | -13 => Error::PermissionDenied,
            -2 => Error::NotFound,
            -3 => Error::NoSuchDomain,
            -16 => Error::Busy,
            -12 | -28 => Error::NoSpace,
            -110 => Error::Timeout,
            -38 | -95 => Error::Unsupported,
            _ => Error::Invalid,
        }
    }

    /// Map a grant-table status code (`GNTST_*`, negative) to an error.
    pub const fn from_gntst(status: i16) -> Self {
        match status {
            -2 => Error::NoSuchDomain,          // GNTST_bad_domain
            -3 | -4 => Error::NotFound,         // GNTST_bad_gntref, GNTST_bad_handle
            -7 | -13 => Error::NoSpace,         // GNTST_no_device_space, GNTST_no_space
            -8 | -9 => Error::PermissionDenied, // GNTST_permission_denied, GNTST_bad_page
            -12 => Error::Busy,                 // GNTST_eagain
            // GNTST_general_error, bad_virt_addr, bad_dev_addr, bad_copy_arg,
            // address_too_big and unknown codes.
            _ => Error::Invalid,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::Invalid => "invalid argument",
            Error::PermissionDenied => "permission denied",
            Error::NotFound => "no such object",
            Error::NoSuchDomain => "no such domain",
            Error::Busy => "object in use",
            Error::NoSpace => "out of space",
            Error::Timeout => "timed out",
            Error::PeerGone => "peer gone",
            Error::RingOverflow => {
                "shared ring overflow (peer claims more entries than the ring holds)"
            }
            Error::Unsupported => "unsupported",
        };
        f.write_str(s)
    }
}

impl core::error::Error for Error {}
