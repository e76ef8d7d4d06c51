//! The toolstack's errors.

use std::fmt;

use xen_platform::{DomId, ShutdownReason};
use xen_store::client::XsClientError;

/// libxl's `ERROR_TIMEDOUT`, the `rc` it prints when a wait times out.
pub const ERROR_TIMEDOUT: i32 = -9;

/// What went wrong.
#[derive(Debug)]
pub enum Error {
    /// A XenStore request failed (`op` on `path`).
    Xs {
        /// What the toolstack was doing (`"write"`, `"set_perms"`, `"transaction"` ...).
        op: &'static str,
        /// The node (or the transaction's subject).
        path: String,
        /// The client's error.
        err: XsClientError,
    },
    /// The hypervisor refused (creating or destroying a domain).
    Sim(xen_sim::Error),
    /// Starting the daemon, its socket or its temporary directory failed.
    Io(std::io::Error),
    /// No such (live) domain.
    NoSuchDomain(DomId),
    /// `libxl__domain_rename`: "domain with name %s already exists".
    NameInUse(String),
    /// A `vdev` that `docs/misc/vbd-interface.txt` does not encode.
    BadVdev(String),
    /// No such device (its frontend directory has no `backend` key, or it is malformed).
    NoSuchDevice(String),
    /// The guest's xenstore client was already taken ([`crate::Guest::xs_client`]).
    AlreadyTaken,
    /// `pvcontrol_cb`: "guest didn't acknowledge control request: -9" — `control/shutdown`
    /// was not cleared within the timeout (it keeps the request).
    GuestDidntAcknowledge {
        /// The domain.
        domid: DomId,
        /// The request (`poweroff`, `reboot`).
        cmd: String,
        /// libxl's rc: [`ERROR_TIMEDOUT`].
        rc: i32,
    },
    /// The guest acknowledged but did not shut down (or shut down for another reason) within
    /// the timeout (`xl shutdown -w` / `xl reboot -w` waiting for the domain).
    ShutdownTimeout {
        /// The domain.
        domid: DomId,
        /// What was asked.
        expected: ShutdownReason,
        /// What the domain did, if anything.
        got: Option<ShutdownReason>,
    },
    /// `device_backend_callback`: "unable to add device with path %s" — the backend did
    /// not reach InitWait within the timeout.
    DeviceAddTimeout {
        /// The backend directory.
        backend_path: String,
        /// The backend's `state` when the wait ended.
        backend_state: Option<u32>,
    },
    /// `device_backend_callback`: "unable to remove device with path %s" — the backend (and
    /// frontend) did not reach Closed within the timeout.
    DeviceRemoveTimeout {
        /// The backend directory.
        backend_path: String,
        /// The frontend's `state` when the wait ended (`None`: missing).
        frontend_state: Option<u32>,
        /// The backend's `state` when the wait ended.
        backend_state: Option<u32>,
        /// Whether the nodes were removed anyway (a forced removal).
        cleaned_up: bool,
    },
    /// `device_destroy_be_watch_cb`: "timed out while waiting for %s to be removed" — a
    /// driver domain's backend reached Closed but its directory was not removed in time
    /// (the driver domain's part, `xl devd`'s in Linux). The frontend's and libxl's nodes
    /// are removed all the same.
    BackendNotRemoved {
        /// The backend directory.
        backend_path: String,
    },
}

impl Error {
    pub(crate) fn xs(
        op: &'static str,
        path: impl Into<String>,
    ) -> impl FnOnce(XsClientError) -> Error {
        let path = path.into();
        move |err| Error::Xs { op, path, err }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Xs { op, path, err } => write!(f, "xenstore {op} {path}: {err}"),
            Error::Sim(e) => write!(f, "hypervisor: {e}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::NoSuchDomain(d) => write!(f, "no such domain {d}"),
            Error::NameInUse(n) => write!(f, "domain with name {n} already exists"),
            Error::BadVdev(v) => write!(f, "invalid or unsupported virtual disk identifier {v}"),
            Error::NoSuchDevice(p) => write!(f, "no such device {p}"),
            Error::AlreadyTaken => f.write_str("the guest's xenstore client was already taken"),
            Error::GuestDidntAcknowledge { rc, .. } => {
                write!(f, "guest didn't acknowledge control request: {rc}")
            }
            Error::ShutdownTimeout {
                domid,
                expected,
                got,
            } => write!(
                f,
                "domain {domid} did not shut down with reason {expected:?} (got {got:?})"
            ),
            Error::DeviceAddTimeout { backend_path, .. } => {
                write!(f, "unable to add device with path {backend_path}")
            }
            Error::DeviceRemoveTimeout { backend_path, .. } => {
                write!(f, "unable to remove device with path {backend_path}")
            }
            Error::BackendNotRemoved { backend_path } => {
                write!(
                    f,
                    "timed out while waiting for {backend_path} to be removed"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<xen_sim::Error> for Error {
    fn from(e: xen_sim::Error) -> Self {
        Error::Sim(e)
    }
}

/// The toolstack's result.
pub type Result<T> = std::result::Result<T, Error>;
