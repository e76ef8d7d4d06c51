//! `xen-platform-linux`: the xenolith platform traits over Linux's Xen device files, so that a
//! driver written against [`xen_platform`] — blkback first — runs as a userspace daemon in a
//! Linux dom0 or driver domain (issue 17).
//!
//! [`LinuxXen::open`] opens `/dev/xen/evtchn` and `/dev/xen/gntdev`; how each trait maps to
//! them:
//!
//! | trait | Linux | notes |
//! |---|---|---|
//! | [`Events`] | `/dev/xen/evtchn` (`xen-evtchn`) | `IOCTL_EVTCHN_BIND_UNBOUND_PORT`, `_BIND_INTERDOMAIN`, `_NOTIFY`, `_UNBIND`; delivered ports are `read()` from the file, and delivery of a port resumes when it is `write()`n back — pending and mask state is kept locally on top (see below) |
//! | [`GrantMapper`] | `/dev/xen/gntdev` (`xen-gntdev`) | `IOCTL_GNTDEV_MAP_GRANT_REF` + `mmap` (all pages of a multi-page ring in one call), `munmap` + `IOCTL_GNTDEV_UNMAP_GRANT_REF`, `IOCTL_GNTDEV_GRANT_COPY` |
//! | [`Pages`] | anonymous `mmap` | page-aligned, zeroed; `frame` is unsupported |
//! | [`Grants`] | — | unsupported: a backend does not grant |
//! | [`Console`] | stderr | |
//! | [`Clock`] | [`Instant`] since `open` | monotonic |
//! | [`Scheduler`] | `poll` / `sched_yield` | `shutdown` is unsupported (a process does not shut its domain down) |
//!
//! **Events.** The evtchn driver disables a port when it delivers it and re-enables it when
//! the port number is written back. The platform reads delivered ports (non-blocking) into a
//! local *pending* set whenever it looks; [`Events::clear`] removes a port from the set and
//! writes it back, so a port's events coalesce while it is pending, as Xen's pending bit does.
//! [`Events::wait`] is `poll(2)` on the file with the timeout; [`Events::mask`] is local (a
//! masked port does not end a wait). The driver does not report a peer that closed its end,
//! so `PeerGone` never comes from this platform. Details in the `evtchn` module.
//!
//! **Grant mappings.** The driver has no grant handles: the platform keeps each mapping's
//! file range by address and unmaps by address ([`Mapping::handle`] is informative only).
//! [`GrantMapper::map_slots`] is `None`: the driver's limit (its `limit` module parameter) is
//! not visible to a process.
//!
//! **Grant copy.** The driver names local memory by virtual address, not by frame, so a
//! [`CopyPtr::Local`](xen_platform::CopyPtr::Local) here carries a virtual page number from
//! [`LinuxXen::copy_frame`], checked against the live page runs on every copy.
//!
//! **Granting** (`/dev/xen/gntalloc`) is left for a frontend that needs it; [`Grants`] here
//! fails with `Unsupported`. XenStore is not part of the platform: use `xen-store-host`'s
//! socket transport (xenstored's socket) or `/dev/xen/xenbus`.
//!
//! Every ioctl number and struct of [`abi`] is checked against the installed C headers
//! (`xen/sys/evtchn.h`, `xen/sys/gntdev.h`) by `ci/abi-oracle`.
//!
//! ```no_run
//! use std::time::Duration;
//! use xen_platform::{Events, GrantMapper};
//! use xen_platform_linux::LinuxXen;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Fails with e.g. "/dev/xen/gntdev: not found — load xen-gntdev (modprobe xen-gntdev)".
//! let xen = LinuxXen::open()?;
//! // A frontend in domain 5 offered port 7 and granted its ring page as ref 8.
//! let port = xen.bind_interdomain(5, 7)?;
//! let ring = xen.map(5, 8, false)?;
//! xen.notify(port)?;
//! if xen.wait(&[port], Some(Duration::from_secs(1))).is_ok() {
//!     xen.clear(port);
//! }
//! xen.unmap(ring)?;
//! xen.close(port)?;
//! # Ok(())
//! # }
//! ```
//!
//! **Dropping** a `LinuxXen` closes both files: the driver unbinds every port. Mappings and
//! page runs still handed out are left mapped (their owners may still use them; the process's
//! exit releases them): unmap and free them first.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xen_platform::{
    Clock, Console, DomId, Error, GrantRef, Grants, Result, Scheduler, ShutdownReason, XenPfn,
    PAGE_SIZE,
};

pub mod abi;
mod evtchn;
mod gntdev;
mod open;
mod pages;
mod sys;

pub use open::OpenError;

#[cfg(doc)]
use xen_platform::{Events, GrantMapper, Mapping, Pages};

/// Where the Xen device nodes are.
pub const DEV_XEN: &str = "/dev/xen";

/// The xenolith platform of a Linux process in a Xen domain (dom0 or a driver domain): see
/// the [crate docs](crate). Shared by reference (`&LinuxXen`, `Arc<LinuxXen>`): every method
/// takes `&self`, and any thread may call any of them.
pub struct LinuxXen {
    /// `/dev/xen/evtchn`, non-blocking.
    evtchn: OwnedFd,
    /// `/dev/xen/gntdev`.
    gntdev: OwnedFd,
    /// [`Clock`]'s zero.
    start: Instant,
    /// Ports: bound, pending, masked; the eventfds of waiting threads.
    events: Mutex<evtchn::EventState>,
    /// Spare eventfds for [`Events::wait`] (one per waiting thread, reused).
    wakers: Mutex<Vec<OwnedFd>>,
    /// Live grant mappings.
    maps: Mutex<gntdev::Maps>,
    /// Live page runs.
    runs: Mutex<pages::Runs>,
}

impl std::fmt::Debug for LinuxXen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxXen")
            .field("evtchn", &self.evtchn)
            .field("gntdev", &self.gntdev)
            .field("mappings", &sys::lock(&self.maps).len())
            .finish_non_exhaustive()
    }
}

impl LinuxXen {
    /// Open the Xen devices in [`DEV_XEN`] (`/dev/xen/evtchn`, `/dev/xen/gntdev`).
    pub fn open() -> std::result::Result<Self, OpenError> {
        Self::open_at(DEV_XEN)
    }

    /// Open the Xen devices in `dir` (`dir/evtchn`, `dir/gntdev`): for a `/dev` mounted
    /// elsewhere (a container), and for tests.
    pub fn open_at(dir: impl AsRef<Path>) -> std::result::Result<Self, OpenError> {
        let dir = dir.as_ref();
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if usize::try_from(page).ok() != Some(PAGE_SIZE) {
            return Err(OpenError::PageSize(page.max(0) as usize));
        }
        let evtchn = open::open_node(&dir.join("evtchn"), "xen-evtchn", libc::O_NONBLOCK)?;
        let gntdev = open::open_node(&dir.join("gntdev"), "xen-gntdev", 0)?;
        Ok(LinuxXen {
            evtchn,
            gntdev,
            start: Instant::now(),
            events: Mutex::new(evtchn::EventState::default()),
            wakers: Mutex::new(Vec::new()),
            maps: Mutex::new(gntdev::Maps::default()),
            runs: Mutex::new(pages::Runs::default()),
        })
    }

    /// The evtchn file, for a daemon that waits on it together with descriptors of its own
    /// (`poll`/`epoll`): it is readable when an event may be pending. Do not read or write
    /// it; [`Events::is_pending`] (or `wait` with a zero timeout) collects what it delivered.
    pub fn evtchn_fd(&self) -> BorrowedFd<'_> {
        self.evtchn.as_fd()
    }
}

/// Granting needs `/dev/xen/gntalloc`, left for a frontend that needs it: a backend does not
/// grant. Every method fails with `Unsupported`.
impl Grants for LinuxXen {
    fn grant(&self, _domid: DomId, _frame: XenPfn, _readonly: bool) -> Result<GrantRef> {
        Err(Error::Unsupported)
    }

    fn end(&self, _gref: GrantRef) -> Result<()> {
        Err(Error::Unsupported)
    }

    fn end_batch(&self, refs: &[GrantRef], failed: &mut dyn FnMut(GrantRef, Error)) -> usize {
        for &r in refs {
            failed(r, Error::Unsupported);
        }
        refs.len()
    }
}

/// The process's stderr (unbuffered; errors are ignored, as a console's are).
impl Console for LinuxXen {
    fn write(&self, bytes: &[u8]) {
        let _ = std::io::stderr().lock().write_all(bytes);
    }
}

/// Monotonic time since [`LinuxXen::open`].
impl Clock for LinuxXen {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Scheduler for LinuxXen {
    /// `sched_yield`.
    fn yield_now(&self) {
        std::thread::yield_now();
    }

    /// Returns at once if an unmasked port is pending; else sleeps in `poll(2)` on the evtchn
    /// file until an event arrives or `timeout` passes (10 ms without a timeout: a hint to
    /// sleep, not a wait for something; use [`Events::wait`] to wait).
    fn block(&self, timeout: Option<Duration>) {
        if self.any_event() {
            return;
        }
        let t = timeout.unwrap_or(evtchn::BLOCK_BOUND);
        let _ = sys::poll_readable(&[self.evtchn.as_fd()], Some(t));
    }

    /// Unsupported: a process does not shut its domain down (that is the toolstack's, or the
    /// domain's own kernel's).
    fn shutdown(&self, _reason: ShutdownReason) -> Result<bool> {
        Err(Error::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "xen-platform-linux-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn is_a_shareable_platform() {
        fn platform_ref<H: xen_platform::PlatformRef + Send + Sync>() {}
        platform_ref::<std::sync::Arc<LinuxXen>>();
        platform_ref::<&'static LinuxXen>();
    }

    #[test]
    fn missing_evtchn_says_which_module_to_load() {
        let dir = TempDir::new();
        let e = LinuxXen::open_at(&dir.0).unwrap_err();
        assert!(
            matches!(&e, OpenError::NotFound { module: "xen-evtchn", path } if path.ends_with("evtchn")),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "{}: not found — load xen-evtchn (modprobe xen-evtchn)",
                dir.0.join("evtchn").display()
            )
        );
    }

    #[test]
    fn dev_xen_messages() {
        let evtchn = Path::new("/dev/xen/evtchn");
        let gntdev = Path::new("/dev/xen/gntdev");
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            OpenError::from_io(evtchn, "xen-evtchn", enoent()).to_string(),
            "/dev/xen/evtchn: not found — load xen-evtchn (modprobe xen-evtchn)"
        );
        assert_eq!(
            OpenError::from_io(gntdev, "xen-gntdev", enoent()).to_string(),
            "/dev/xen/gntdev: not found — load xen-gntdev (modprobe xen-gntdev)"
        );
        let eacces = std::io::Error::from_raw_os_error(libc::EACCES);
        let e = OpenError::from_io(gntdev, "xen-gntdev", eacces);
        assert!(matches!(e, OpenError::PermissionDenied { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("/dev/xen/gntdev: permission denied — run as root"),
            "{e}"
        );
        let enodev = std::io::Error::from_raw_os_error(libc::ENODEV);
        let e = OpenError::from_io(evtchn, "xen-evtchn", enodev);
        assert_eq!(
            e.to_string(),
            "/dev/xen/evtchn: no such device — not a Xen domain, or xen-evtchn is not loaded \
             (modprobe xen-evtchn)"
        );
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let e = OpenError::from_io(evtchn, "xen-evtchn", eio);
        assert!(matches!(e, OpenError::Io { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.to_string().starts_with("/dev/xen/evtchn: "), "{e}");
    }

    #[test]
    fn regular_files_are_not_devices() {
        let dir = TempDir::new();
        fs::write(dir.0.join("evtchn"), b"").unwrap();
        fs::write(dir.0.join("gntdev"), b"").unwrap();
        let e = LinuxXen::open_at(&dir.0).unwrap_err();
        assert!(
            matches!(&e, OpenError::NotADevice { path } if path.ends_with("evtchn")),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("{}: not a character device", dir.0.join("evtchn").display())
        );
    }

    #[test]
    fn unreadable_node_is_permission_denied() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no memory effects.
        if unsafe { libc::geteuid() } == 0 {
            // root opens a mode-000 file anyway; the mapping is covered by dev_xen_messages.
            return;
        }
        let dir = TempDir::new();
        let p = dir.0.join("evtchn");
        fs::write(&p, b"").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o000)).unwrap();
        let e = LinuxXen::open_at(&dir.0).unwrap_err();
        assert!(matches!(e, OpenError::PermissionDenied { .. }), "{e:?}");
    }

    #[test]
    fn open_on_this_machine_explains_itself() {
        // This machine may or may not be a Xen domain; either way the result is usable.
        match LinuxXen::open() {
            Ok(x) => drop(x),
            Err(e) => {
                let s = e.to_string();
                assert!(s.starts_with("/dev/xen/") || s.contains("page size"), "{s}");
            }
        }
    }
}
