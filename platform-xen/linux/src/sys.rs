//! The few system calls the platform makes, wrapped: `ioctl` with `EINTR` retried, `poll` of one
//! descriptor, and the errno → [`Error`] mapping.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use xen_platform::Error;

/// Lock a mutex, ignoring poisoning: every critical section leaves its state consistent at
/// each step, so a panic elsewhere does not make it unusable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `ioctl(fd, req, arg)`, retried on `EINTR`; the non-negative return value on success.
///
/// # Safety
/// `arg` must point at the argument `req` expects on this device (its type and, for a
/// variable-length argument, its whole extent), valid for the kernel to read and write for the
/// duration of the call, and whatever pointers that argument contains must be valid as the
/// ioctl's contract requires.
pub(crate) unsafe fn ioctl<T>(fd: BorrowedFd<'_>, req: u32, arg: *mut T) -> io::Result<i32> {
    loop {
        // SAFETY: the argument is valid as the caller guarantees; `fd` is an open descriptor
        // (borrowed for the call).
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, arg) };
        if rc >= 0 {
            return Ok(rc);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Wait until one of `fds` (at most 2) is readable or `timeout` passes (`None`: no limit).
/// Returns whether one is readable: `false` on timeout and on `EINTR` (callers loop with their
/// own deadline).
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<bool> {
    let ms: libc::c_int = match timeout {
        None => -1,
        // Round up, so that a wait of 0.5 ms sleeps rather than spins.
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    };
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 2];
    assert!(
        fds.len() <= pfds.len(),
        "poll_readable: too many descriptors"
    );
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
    }
    // SAFETY: `fds.len()` valid pollfd entries, alive and writable across the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// A non-blocking `eventfd`: how a thread that changes the pending set wakes the threads
/// sleeping in [`poll_readable`] on the evtchn file (which no longer looks readable to them).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: eventfd() just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make an eventfd readable (add 1 to its counter). Best effort: it only fails when the
/// counter is about to overflow, which leaves it readable anyway.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live local buffer to an open eventfd.
    let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Reset an eventfd's counter to 0 (not readable). Non-blocking: nothing to do if it was 0.
pub(crate) fn eventfd_reset(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live local buffer from an open eventfd.
    let _ = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
}

/// The platform error for a failed system call on a Xen device.
pub(crate) fn error_from_io(e: &io::Error) -> Error {
    error_from_errno(e.raw_os_error().unwrap_or(libc::EINVAL))
}

/// The platform error for an errno of the Xen device drivers (which mostly pass on the
/// hypervisor's own errno, with the same values on Linux x86).
pub(crate) fn error_from_errno(errno: i32) -> Error {
    match errno {
        libc::EPERM | libc::EACCES => Error::PermissionDenied,
        // evtchn answers ENOTCONN for a port not bound through this file.
        libc::ENOENT | libc::ENOTCONN => Error::NotFound,
        libc::ESRCH => Error::NoSuchDomain,
        libc::EBUSY | libc::EAGAIN => Error::Busy,
        libc::ENOMEM | libc::ENOSPC | libc::EMFILE | libc::ENFILE => Error::NoSpace,
        libc::ETIMEDOUT => Error::Timeout,
        libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOTTY | libc::ENODEV => Error::Unsupported,
        _ => Error::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(error_from_errno(libc::EPERM), Error::PermissionDenied);
        assert_eq!(error_from_errno(libc::ENOTCONN), Error::NotFound);
        assert_eq!(error_from_errno(libc::ESRCH), Error::NoSuchDomain);
        assert_eq!(error_from_errno(libc::ENOMEM), Error::NoSpace);
        assert_eq!(error_from_errno(libc::ENOTTY), Error::Unsupported);
        assert_eq!(error_from_errno(libc::EINVAL), Error::Invalid);
        assert_eq!(error_from_errno(libc::EFAULT), Error::Invalid);
        // The Linux errno values agree with Xen's (xen/errno.h) for what both name.
        for e in [
            libc::EPERM,
            libc::ENOENT,
            libc::ESRCH,
            libc::EBUSY,
            libc::ENOSPC,
            libc::ETIMEDOUT,
        ] {
            assert_eq!(error_from_errno(e), Error::from_xen_errno(-e), "errno {e}");
        }
    }

    #[test]
    fn poll_and_eventfd_wakeups() {
        use std::os::fd::AsFd;
        let a = eventfd().unwrap();
        let b = eventfd().unwrap();
        let both = [a.as_fd(), b.as_fd()];
        let t0 = std::time::Instant::now();
        assert!(!poll_readable(&both, Some(Duration::from_micros(1500))).unwrap());
        assert!(t0.elapsed() >= Duration::from_millis(1));
        eventfd_signal(b.as_fd());
        eventfd_signal(b.as_fd());
        assert!(poll_readable(&both, None).unwrap());
        assert!(poll_readable(&[b.as_fd()], Some(Duration::ZERO)).unwrap());
        assert!(!poll_readable(&[a.as_fd()], Some(Duration::ZERO)).unwrap());
        eventfd_reset(b.as_fd());
        assert!(!poll_readable(&both, Some(Duration::ZERO)).unwrap());
        // Resetting a counter that is already 0 does not block.
        eventfd_reset(b.as_fd());
    }
}
