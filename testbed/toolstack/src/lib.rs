//! `xen-toolstack`: libxl and `xl` for the simulator.
//!
//! A [`Toolstack`] owns a simulated hypervisor ([`xen_sim::Hypervisor`]) with dom0, our
//! xenstored running in dom0 ([`Xenstored::start_sim`]) on a Unix socket in a temporary
//! directory, and a privileged dom0 client on that socket. Its commands write exactly the
//! nodes, values and permissions that Xen 4.17's libxl writes (captured on real Xen in the
//! lab: `docs/XENSTORE-LAYOUT.md`), in the same transactions, so that frontends and
//! backends tested here meet the XenStore a real `xl` would give them.
//!
//! | `xl` | here |
//! |---|---|
//! | `xl create` | [`Toolstack::create_domain`] → [`Guest`] |
//! | `disk = [...]` / `xl block-attach` | [`Toolstack::add_vbd`] ([`Vbd`]); any class: [`Toolstack::add_device`] |
//! | `xl block-detach` | [`Toolstack::block_detach`] / [`Toolstack::remove_device`] |
//! | `xl shutdown -w` / `xl reboot -w` | [`Toolstack::shutdown`] / [`Toolstack::reboot`] |
//! | `xl destroy` | [`Toolstack::destroy`] |
//!
//! ```
//! use xen_store::client::Store as _;
//! use xen_toolstack::{DomainConfig, Toolstack, Vbd};
//!
//! let ts = Toolstack::new().unwrap();
//! let guest = ts.create_domain("guest", DomainConfig::default()).unwrap();
//! let dev = ts.add_vbd(&Vbd::new(guest.domid(), 0, "xvda", "/root/disk.img")).unwrap();
//! assert_eq!(dev.devid, 51712);
//! let mut xs = guest.xs_client().unwrap(); // the guest, over its ring
//! assert_eq!(xs.read_string("device/vbd/51712/backend-id").unwrap(), "0");
//! ```
//!
//! # What is written (N = the new domain, F = frontend domain, B = backend domain)
//! Permissions as `xenstore-ls -p` prints them: the first entry is the owner and everyone
//! else's access; `(n0,rN)` = owned by dom0, no access for others, N may read.
//!
//! **`xl create`** — `libxl__domain_make` in one transaction, then `libxl__build_post` in a
//! second, then `XS_INTRODUCE`, then the console:
//!
//! | node | value | perms |
//! |---|---|---|
//! | `/local/domain/N` | `""` | `(n0,rN)` |
//! | `…/vm` | `/vm/<uuid>` | `(n0,rN)` |
//! | `…/name` | the name | `(n0,rN)` |
//! | `…/control/platform-feature-multiprocessor-suspend` | `1` | `(n0,rN)` |
//! | `…/control/platform-feature-xs_reset_watches` | `1` | `(n0,rN)` |
//! | `…/control/shutdown`, `…/control/feature-poweroff`, `…/control/feature-reboot`, `…/control/feature-suspend`, `…/control/sysrq` | `""` | `(nN)` |
//! | `…/data`, `…/drivers`, `…/feature`, `…/attr`, `…/error` | `""` | `(nN)` |
//! | `…/device/suspend/event-channel` | `""` | `(nN)` (parents `(n0,rN)`) |
//! | `…/libxl`, `…/device-model` (only with `driver_domain`) | `""` | `(nN)` |
//! | `…/memory/static-max`, `…/memory/target`, `…/memory/videoram` | KiB | `(n0,rN)` |
//! | `…/domid` | N | `(n0,rN)` |
//! | `…/store/port`, `…/store/ring-ref` | the guest's xenstore port and frame | `(n0,rN)` |
//! | `…/cpu/<i>/availability` | `online` | `(n0,rN)` |
//! | `…/console/{backend-id,limit,type,output,tty}` | `0`, `1048576`, `xenconsoled`, `pty`, `""` | `(n0,rN)` |
//! | `/vm/<uuid>` | `""` | `(n0,rN)` |
//! | `/vm/<uuid>/{uuid,name,start_time}` | | `(n0,rN)` |
//! | `/libxl/N`, `/libxl/N/device` | `""` | `(n0)` |
//! | `/libxl/N/type` | `pv` | `(n0)` |
//!
//! **A device** (`libxl__device_generic_add`, one transaction; a vbd's keys as `xl create`'s
//! `disk=` and `xl block-attach` write them):
//!
//! | node | perms |
//! |---|---|
//! | frontend dir `/local/domain/F/device/<class>/<devid>` and every key | `(nF,rB)` |
//! | its parents `device`, `device/<class>` (created by the write) | inherited: `(n0,rF)` |
//! | backend dir `/local/domain/B/backend/<class>/F/<devid>` and every key | `(nB,rF)` |
//! | its parents `backend`, `backend/<class>`, `backend/<class>/F` (created by the write) | inherited: `(n0)` for B = 0, `(n0,rB)` for a driver domain |
//! | libxl's copy `/libxl/F/device/<class>/<devid>/*` (the backend keys) | `(n0)` |
//!
//! vbd frontend keys: `backend`, `backend-id`, `state=1`, `virtual-device=<devid>`,
//! `device-type=disk`, `trusted=1`, `protocol=x86_64-abi` (libxl writes it for PV guests).
//! vbd backend keys: `frontend`, `params=<target>`, `script=/etc/xen/scripts/block`,
//! `frontend-id`, `online=1`, `removable=0`, `bootable=1`, `state=1`, `dev=<vdev>`,
//! `type=<backendtype>`, `mode=w|r`, `device-type=disk`, `discard-enable=1`,
//! `specification=xen`. The devid is the vdev's number ([`vdev_to_devid`]).
//!
//! Where the toolstack differs from real Xen: no hotplug script runs — `add_device` /
//! `add_vbd` only write (no wait), [`Toolstack::attach_vbd`] / [`Toolstack::attach_wait`]
//! also wait for the backend's InitWait as libxl does and then write only the script's
//! `hotplug-status=connected` for a dom0 backend (never `node`, `physical-device`). A
//! detach waits for the frontend's Closed as well as the backend's (libxl: the backend's
//! only). A detach of a driver domain's device, as libxl, leaves the backend directory to the
//! driver domain and waits for it to go. `xl reboot` here does not re-create the domain
//! (xl's daemon would). `xl destroy` does not wait for backends to close after `online=0`,
//! and removes a driver domain's backend directory itself.
//!
//! # Waiting
//! Every wait ([`Toolstack::wait_for`]) is bounded: it opens its own dom0 connection,
//! watches the nodes involved, and re-checks its condition on every event and at least
//! every 50 ms. The timeouts ([`Timeouts`]) default to libxl's (10 s for a device removal,
//! 60 s for a control request) and can be made short for tests.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod create;
mod devices;
pub use devices::{DetachOptions, Device, DeviceSpec, Vbd};
mod error;
mod lifecycle;
mod vdev;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xen_platform::{DomId, EvtchnPort, ShutdownReason, XenPfn};
use xen_sim::{Domain, Hypervisor};
use xen_store::client::{Client, ClientConfig, Store, XsClientError};
use xen_store::perms::{Access, Perm, Perms};
use xen_store::server::Quotas;
use xen_store::XsError;
use xen_store_host::xenstored::{SimGuest, Xenstored};
use xen_store_host::{OwnedRing, UnixTransport};

pub use error::{Error, Result, ERROR_TIMEDOUT};
pub use vdev::{vdev_to_devid, xvd};

/// A privileged dom0 connection (over our xenstored's Unix socket).
pub type Dom0Client = Client<UnixTransport>;

/// A guest's connection over its xenstore ring.
pub type GuestClient = Client<OwnedRing<Domain>>;

/// XenbusState values (`xen/io/xenbus.h`) the toolstack writes and waits for.
pub mod state {
    /// `XenbusStateInitialising`: what libxl writes into both new device directories.
    pub const INITIALISING: u32 = 1;
    /// `XenbusStateInitWait`.
    pub const INIT_WAIT: u32 = 2;
    /// `XenbusStateInitialised`.
    pub const INITIALISED: u32 = 3;
    /// `XenbusStateConnected`.
    pub const CONNECTED: u32 = 4;
    /// `XenbusStateClosing`: what `xl block-detach` writes into the backend.
    pub const CLOSING: u32 = 5;
    /// `XenbusStateClosed`: what a detach waits for.
    pub const CLOSED: u32 = 6;
}

/// How long the toolstack waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For the guest to acknowledge `control/shutdown` (libxl: 60 s).
    pub control_ack: Duration,
    /// For the domain to shut down once it acknowledged (`xl shutdown -w`; default 60 s).
    pub shutdown: Duration,
    /// For the backend and frontend to reach Closed in a detach (libxl's
    /// `LIBXL_DESTROY_TIMEOUT`: 10 s).
    pub device_remove: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            control_ack: Duration::from_secs(60),
            shutdown: Duration::from_secs(60),
            device_remove: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// Every timeout set to `t` (for tests).
    pub fn all(t: Duration) -> Timeouts {
        Timeouts {
            control_ack: t,
            shutdown: t,
            device_remove: t,
        }
    }
}

/// How a [`Toolstack`] is started.
#[derive(Debug, Clone, Default)]
pub struct ToolstackConfig {
    /// The simulated hypervisor's limits.
    pub sim: xen_sim::Config,
    /// xenstored's quotas.
    pub quotas: Quotas,
    /// The toolstack's timeouts.
    pub timeouts: Timeouts,
}

/// What `xl create` is told about a domain (the subset of an xl .cfg that shows in XenStore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// The domid (`domid=`); `None`: the hypervisor's next one.
    pub domid: Option<DomId>,
    /// `maxmem`, KiB (`memory/static-max`). Default 128 MiB.
    pub max_memory_kib: u64,
    /// `memory`, KiB (`memory/target` is this minus the video memory). Default 128 MiB.
    pub target_memory_kib: u64,
    /// `videoram`, KiB (`memory/videoram`). Default 0 (libxl's default for PV).
    pub video_memory_kib: u64,
    /// `vcpus` (`cpu/<i>/availability = online` for each). Default 1.
    pub vcpus: u32,
    /// `driver_domain=1`: also create `/local/domain/N/libxl` and `device-model`.
    pub driver_domain: bool,
    /// The domain's UUID; `None`: a fresh random-looking one.
    pub uuid: Option<String>,
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            domid: None,
            max_memory_kib: 128 * 1024,
            target_memory_kib: 128 * 1024,
            video_memory_kib: 0,
            vcpus: 1,
            driver_domain: false,
            uuid: None,
        }
    }
}

impl DomainConfig {
    /// The default configuration with domid `domid`.
    pub fn with_domid(domid: DomId) -> DomainConfig {
        DomainConfig {
            domid: Some(domid),
            ..DomainConfig::default()
        }
    }

    /// A driver domain (`driver_domain=1`).
    pub fn driver_domain(mut self) -> DomainConfig {
        self.driver_domain = true;
        self
    }
}

/// A domain created by [`Toolstack::create_domain`]. `Send + Sync`.
#[derive(Debug)]
pub struct Guest {
    domain: Domain,
    uuid: String,
    store_port: EvtchnPort,
    store_frame: XenPfn,
    ring: Mutex<Option<OwnedRing<Domain>>>,
}

/// How long a guest's client waits for a reply (and for its ring to be connected).
const GUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Guest {
    /// The domid.
    pub fn domid(&self) -> DomId {
        self.domain.id()
    }

    /// The simulated domain (implements every platform trait).
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.domain.name()
    }

    /// The UUID (`/vm/<uuid>`).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// `/local/domain/<domid>`.
    pub fn dom_path(&self) -> String {
        dom_path(self.domid())
    }

    /// The guest's xenstore event channel (`store/port`, `HVM_PARAM_STORE_EVTCHN`).
    pub fn store_port(&self) -> EvtchnPort {
        self.store_port
    }

    /// The guest's xenstore page frame (`store/ring-ref`, `HVM_PARAM_STORE_PFN`).
    pub fn store_frame(&self) -> XenPfn {
        self.store_frame
    }

    /// The guest's XenStore client over its ring, found from `HVM_PARAM_STORE_PFN`/`_EVTCHN`
    /// as the guest itself finds it, connected, with 10 s requests. There is one ring per
    /// guest, so this (or [`Guest::take_transport`]) works once; [`Error::AlreadyTaken`]
    /// afterwards.
    pub fn xs_client(&self) -> Result<GuestClient> {
        let mut t = self.take_transport()?;
        t.connect(GUEST_TIMEOUT)
            .map_err(|e| Error::xs("connect", self.dom_path())(e.into()))?;
        Ok(Client::with_config(
            t,
            ClientConfig {
                timeout: GUEST_TIMEOUT,
                ..ClientConfig::default()
            },
        ))
    }

    /// The guest's ring transport, not yet connected (for a guest that builds its own
    /// client). Once only, as [`Guest::xs_client`].
    pub fn take_transport(&self) -> Result<OwnedRing<Domain>> {
        lock(&self.ring).take().ok_or(Error::AlreadyTaken)
    }
}

/// Paths of a domain.
pub fn dom_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn perms(entries: &[(Access, DomId)]) -> Perms {
    let v: Vec<Perm> = entries.iter().map(|&(a, d)| Perm::new(a, d)).collect();
    match Perms::from_vec(v) {
        Ok(p) => p,
        // Never empty: every call site passes at least the owner.
        Err(_) => Perms::new(0, Access::None),
    }
}

/// One step of a toolstack transaction.
#[derive(Debug, Clone)]
enum Op {
    /// `xs_rm`, a missing node is fine.
    Rm(String),
    /// `xs_write`.
    Write(String, String),
    /// `libxl__xs_mknod`: write `""` and set the permissions.
    Mknod(String, Perms),
    /// `xs_set_permissions`.
    SetPerms(String, Perms),
}

fn run_ops<S: Store>(tx: &mut S, ops: &[Op]) -> std::result::Result<(), XsClientError> {
    for op in ops {
        match op {
            Op::Rm(p) => match tx.rm(p) {
                Ok(()) | Err(XsClientError::Xs(XsError::Enoent)) => {}
                Err(e) => return Err(e),
            },
            Op::Write(p, v) => tx.write(p, v.as_bytes())?,
            Op::Mknod(p, perms) => {
                tx.write(p, b"")?;
                tx.set_perms(p, perms)?;
            }
            Op::SetPerms(p, perms) => tx.set_perms(p, perms)?,
        }
    }
    Ok(())
}

/// The simulator's toolstack. See the [crate docs](crate).
pub struct Toolstack {
    /// Taken (stopped) first on drop, while its socket file exists.
    xsd: Option<Xenstored>,
    hv: Arc<Hypervisor>,
    dom0: Domain,
    dir: PathBuf,
    xs: Mutex<Dom0Client>,
    timeouts: Mutex<Timeouts>,
}

impl std::fmt::Debug for Toolstack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toolstack")
            .field("hv", &self.hv)
            .field("socket", &self.socket())
            .finish()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Requests of the toolstack's own connections may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a wait sleeps between two looks at its condition.
const POLL: Duration = Duration::from_millis(50);

impl Toolstack {
    /// A hypervisor with dom0 (`Domain-0`), our xenstored in it, and dom0's home
    /// (`/local/domain/0/{name,domid}`, as `xen-init-dom0` writes it); default limits and
    /// libxl's timeouts.
    pub fn new() -> Result<Toolstack> {
        Self::with_config(ToolstackConfig::default())
    }

    /// [`new`](Self::new) with `config`.
    pub fn with_config(config: ToolstackConfig) -> Result<Toolstack> {
        let hv = Hypervisor::with_config(config.sim);
        let dom0 = hv.create_domain("Domain-0");
        let xsd = Xenstored::start_sim(&hv, config.quotas)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Short: a socket path must stay under 108 bytes.
        let dir = std::env::temp_dir().join(format!("xts-{}-{n}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("socket");
        let xs = xsd
            .serve_socket(&sock)
            .and_then(|()| UnixTransport::connect(&sock));
        let xs = match xs {
            Ok(t) => Client::with_config(
                t,
                ClientConfig {
                    timeout: REQUEST_TIMEOUT,
                    ..ClientConfig::default()
                },
            ),
            Err(e) => {
                drop(xsd);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let ts = Toolstack {
            xsd: Some(xsd),
            hv,
            dom0,
            dir,
            xs: Mutex::new(xs),
            timeouts: Mutex::new(config.timeouts),
        };
        ts.transact(
            "dom0 home",
            &[
                Op::Write("/local/domain/0/name".into(), "Domain-0".into()),
                Op::Write("/local/domain/0/domid".into(), "0".into()),
            ],
        )?;
        Ok(ts)
    }

    /// The hypervisor.
    pub fn hv(&self) -> &Arc<Hypervisor> {
        &self.hv
    }

    /// Dom0.
    pub fn dom0(&self) -> &Domain {
        &self.dom0
    }

    /// Our xenstored.
    pub fn xenstored(&self) -> &Xenstored {
        match &self.xsd {
            Some(x) => x,
            None => unreachable!("the daemon is only taken by drop"),
        }
    }

    /// The dom0 socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("socket")
    }

    /// A new privileged dom0 connection (over the daemon's Unix socket; 10 s requests).
    pub fn dom0_client(&self) -> Result<Dom0Client> {
        let t = UnixTransport::connect(self.socket())?;
        Ok(Client::with_config(
            t,
            ClientConfig {
                timeout: REQUEST_TIMEOUT,
                ..ClientConfig::default()
            },
        ))
    }

    /// Run `f` on the toolstack's own dom0 connection.
    pub fn with_xs<R>(&self, f: impl FnOnce(&mut Dom0Client) -> R) -> R {
        f(&mut lock(&self.xs))
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        *lock(&self.timeouts)
    }

    /// Change the timeouts.
    pub fn set_timeouts(&self, t: Timeouts) {
        *lock(&self.timeouts) = t;
    }

    /// Run `ops` in one transaction on the toolstack's connection (retried on `EAGAIN`).
    fn transact(&self, what: &'static str, ops: &[Op]) -> Result<()> {
        let mut xs = lock(&self.xs);
        xs.transact(|tx| run_ops(tx, ops))
            .map_err(Error::xs("transaction", what))
    }
}

impl Drop for Toolstack {
    fn drop(&mut self) {
        // Stop the daemon (its socket connections end) while the socket file still exists.
        drop(self.xsd.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Read a decimal state; `None` if the node is missing or not a number.
fn read_u32<S: Store>(xs: &mut S, path: &str) -> std::result::Result<Option<u32>, XsClientError> {
    Ok(xs
        .try_read(path)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.trim().parse().ok()))
}

/// `libxl__xs_path_cleanup`: remove `path`, then each parent whose value is empty and that has
/// no children left, stopping at the first that is not (or at `/`).
fn path_cleanup<S: Store>(tx: &mut S, path: &str) -> std::result::Result<(), XsClientError> {
    match tx.rm(path) {
        Ok(()) => {}
        Err(XsClientError::Xs(XsError::Enoent)) => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut p = path.to_string();
    while let Some(i) = p.rfind('/') {
        p.truncate(i);
        if p.is_empty() {
            break;
        }
        match tx.try_read(&p)? {
            Some(v) if v.is_empty() => {}
            _ => break,
        }
        if !tx.directory(&p)?.is_empty() {
            break;
        }
        tx.rm(&p)?;
    }
    Ok(())
}

/// A UUID-shaped string, unique in this process (version-4 layout).
fn make_uuid(domid: DomId) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let a = t ^ (u64::from(std::process::id()) << 32) ^ n.rotate_left(17);
    let b = (u64::from(domid) << 48) ^ n ^ t.rotate_left(29);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0xfff) as u16,
        (b >> 48) as u16 & 0xfff,
        b & 0xffff_ffff_ffff
    )
}
