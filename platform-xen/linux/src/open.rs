//! Opening the device nodes, and what to tell the user when that fails.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why [`LinuxXen::open`](crate::LinuxXen::open) failed. Its `Display` says what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The device node does not exist: the driver (`module`) is not loaded, or this is not a
    /// Xen domain.
    NotFound {
        /// The node.
        path: PathBuf,
        /// The kernel module that provides it (`xen-evtchn`, `xen-gntdev`).
        module: &'static str,
    },
    /// The node exists but this process may not open it for reading and writing.
    PermissionDenied {
        /// The node.
        path: PathBuf,
    },
    /// The node exists but no driver answers behind it (`ENODEV`/`ENXIO`).
    NoDevice {
        /// The node.
        path: PathBuf,
        /// The kernel module that provides it.
        module: &'static str,
    },
    /// The path exists but is not a character device.
    NotADevice {
        /// The path.
        path: PathBuf,
    },
    /// Any other error opening the node.
    Io {
        /// The node.
        path: PathBuf,
        /// What `open` said.
        source: io::Error,
    },
    /// The system's page size is not Xen's 4096 bytes (the mapping code assumes they agree).
    PageSize(usize),
}

impl OpenError {
    /// The error for a failed `open` of `path`, which `module` provides.
    pub(crate) fn from_io(path: &Path, module: &'static str, e: io::Error) -> Self {
        let path = path.to_path_buf();
        match e.raw_os_error() {
            Some(libc::ENOENT) => OpenError::NotFound { path, module },
            Some(libc::EACCES | libc::EPERM) => OpenError::PermissionDenied { path },
            Some(libc::ENODEV | libc::ENXIO) => OpenError::NoDevice { path, module },
            _ => OpenError::Io { path, source: e },
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NotFound { path, module } => write!(
                f,
                "{}: not found — load {module} (modprobe {module})",
                path.display()
            ),
            OpenError::PermissionDenied { path } => write!(
                f,
                "{}: permission denied — run as root, or give this user read and write access \
                 to the node",
                path.display()
            ),
            OpenError::NoDevice { path, module } => write!(
                f,
                "{}: no such device — not a Xen domain, or {module} is not loaded \
                 (modprobe {module})",
                path.display()
            ),
            OpenError::NotADevice { path } => {
                write!(f, "{}: not a character device", path.display())
            }
            OpenError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            OpenError::PageSize(n) => write!(
                f,
                "the page size is {n} bytes; xen-platform-linux needs 4096-byte pages"
            ),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Open `path` (a character device `module` provides) for reading and writing, with
/// `extra_flags` (`O_CLOEXEC` is always set).
pub(crate) fn open_node(
    path: &Path,
    module: &'static str,
    extra_flags: i32,
) -> Result<OwnedFd, OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(extra_flags)
        .open(path)
        .map_err(|e| OpenError::from_io(path, module, e))?;
    let meta = file
        .metadata()
        .map_err(|e| OpenError::from_io(path, module, e))?;
    if !meta.file_type().is_char_device() {
        return Err(OpenError::NotADevice {
            path: path.to_path_buf(),
        });
    }
    Ok(file.into())
}
