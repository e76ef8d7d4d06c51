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

mod error;
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

/// A device's identity: class (`vbd`, or any name), frontend and backend domains, devid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Device {
    /// The device class (`vbd`, `vif`, or a test's own): the frontend's `device/<class>`.
    pub class: String,
    /// The backend's class, `backend/<backend_class>`: the same as `class` except where libxl
    /// picks another (a vbd with `backendtype=qdisk` is served from `backend/qdisk`, as seen
    /// on real Xen 4.17).
    pub backend_class: String,
    /// The frontend domain.
    pub frontend: DomId,
    /// The backend domain.
    pub backend: DomId,
    /// The device id (a vbd's virtual-device number).
    pub devid: u32,
}

impl Device {
    /// `/local/domain/<fe>/device/<class>/<devid>`.
    pub fn frontend_path(&self) -> String {
        format!(
            "{}/device/{}/{}",
            dom_path(self.frontend),
            self.class,
            self.devid
        )
    }

    /// `/local/domain/<be>/backend/<backend_class>/<fe>/<devid>`.
    pub fn backend_path(&self) -> String {
        format!(
            "{}/backend/{}/{}/{}",
            dom_path(self.backend),
            self.backend_class,
            self.frontend,
            self.devid
        )
    }

    /// libxl's copy: `/libxl/<fe>/device/<class>/<devid>`.
    pub fn libxl_path(&self) -> String {
        format!(
            "/libxl/{}/device/{}/{}",
            self.frontend, self.class, self.devid
        )
    }
}

/// The `<type>` of a backend path `/local/domain/<be>/backend/<type>/<fe>/<devid>`.
fn backend_class_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/local/domain/")?;
    let mut parts = rest.split('/');
    parts.next()?;
    (parts.next()? == "backend").then_some(())?;
    parts.next().map(str::to_string)
}

/// A generic device for [`Toolstack::add_device`]: the identity plus the keys libxl's
/// caller passes to `libxl__device_generic_add`. `backend` (frontend side) and `frontend`
/// (backend side) are added by the toolstack, first, as libxl does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Who and what.
    pub device: Device,
    /// Frontend keys, in order (after `backend`).
    pub frontend_keys: Vec<(String, String)>,
    /// Backend keys, in order (after `frontend`); libxl keeps a copy of these.
    pub backend_keys: Vec<(String, String)>,
}

impl DeviceSpec {
    /// A device of class `class` with the keys every libxl device has: frontend
    /// `backend-id`, `state=1`; backend `frontend-id`, `online=1`, `state=1`.
    pub fn new(class: &str, frontend: DomId, backend: DomId, devid: u32) -> DeviceSpec {
        DeviceSpec {
            device: Device {
                class: class.to_string(),
                backend_class: class.to_string(),
                frontend,
                backend,
                devid,
            },
            frontend_keys: vec![
                ("backend-id".into(), backend.to_string()),
                ("state".into(), state::INITIALISING.to_string()),
            ],
            backend_keys: vec![
                ("frontend-id".into(), frontend.to_string()),
                ("online".into(), "1".into()),
                ("state".into(), state::INITIALISING.to_string()),
            ],
        }
    }

    /// Add (or replace) a frontend key.
    pub fn frontend_key(mut self, key: &str, value: &str) -> DeviceSpec {
        set_key(&mut self.frontend_keys, key, value);
        self
    }

    /// Add (or replace) a backend key.
    pub fn backend_key(mut self, key: &str, value: &str) -> DeviceSpec {
        set_key(&mut self.backend_keys, key, value);
        self
    }
}

fn set_key(keys: &mut Vec<(String, String)>, key: &str, value: &str) {
    match keys.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value.to_string(),
        None => keys.push((key.to_string(), value.to_string())),
    }
}

/// A disk as `xl create`'s `disk=` / `xl block-attach` describe it
/// (`format=raw, vdev=xvda, access=rw, backendtype=phy, target=/root/disk.img`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vbd {
    /// The frontend domain.
    pub frontend: DomId,
    /// The backend domain (`backend=`; 0 or a driver domain).
    pub backend: DomId,
    /// `vdev=` (`xvda`, `d1p2`, `51712` ...): the backend's `dev`; its number is the devid.
    pub vdev: String,
    /// `target=`: the backend's `params`.
    pub target: String,
    /// `access=rw` (`mode=w`, the default) or `ro` (`mode=r`).
    pub writable: bool,
    /// `backendtype=` (`phy` default; `tap`, `qdisk`): the backend's `type`.
    pub backendtype: String,
    /// `script=` (default `/etc/xen/scripts/block`).
    pub script: String,
    /// `devtype=cdrom` (`device-type=cdrom`, `removable=1`) instead of a disk.
    pub cdrom: bool,
    /// `discard` (default on): `discard-enable`.
    pub discard: bool,
    /// `trusted` (default 1).
    pub trusted: bool,
    /// The frontend `protocol` libxl writes for PV guests (default `x86_64-abi`; `None`:
    /// not written, as for PVH/HVM).
    pub protocol: Option<String>,
}

impl Vbd {
    /// A read-write `phy` disk `vdev` of domain `frontend`, served by `backend`, backed by
    /// `target`.
    pub fn new(frontend: DomId, backend: DomId, vdev: &str, target: &str) -> Vbd {
        Vbd {
            frontend,
            backend,
            vdev: vdev.to_string(),
            target: target.to_string(),
            writable: true,
            backendtype: "phy".into(),
            script: "/etc/xen/scripts/block".into(),
            cdrom: false,
            discard: true,
            trusted: true,
            protocol: Some("x86_64-abi".into()),
        }
    }

    /// Read-only (`access=ro`, `mode=r`).
    pub fn read_only(mut self) -> Vbd {
        self.writable = false;
        self
    }

    /// The device spec libxl's `device_disk_add` hands to `libxl__device_generic_add`.
    pub fn spec(&self) -> Result<DeviceSpec> {
        let devid = vdev_to_devid(&self.vdev).ok_or_else(|| Error::BadVdev(self.vdev.clone()))?;
        let dtype = if self.cdrom { "cdrom" } else { "disk" };
        let mut fe = vec![
            ("backend-id".to_string(), self.backend.to_string()),
            ("state".into(), state::INITIALISING.to_string()),
            ("virtual-device".into(), devid.to_string()),
            ("device-type".into(), dtype.into()),
            (
                "trusted".into(),
                if self.trusted { "1" } else { "0" }.into(),
            ),
        ];
        if let Some(p) = &self.protocol {
            fe.push(("protocol".into(), p.clone()));
        }
        // libxl (seen on Xen 4.17): a qdisk vbd's backend is under backend/qdisk, its params
        // "aio:<target>" for a raw file, and it has no hotplug script
        let qdisk = self.backendtype == "qdisk";
        let mut be = vec![(
            "params".to_string(),
            if qdisk {
                format!("aio:{}", self.target)
            } else {
                self.target.clone()
            },
        )];
        if !qdisk {
            be.push(("script".into(), self.script.clone()));
        }
        be.extend([
            ("frontend-id".into(), self.frontend.to_string()),
            ("online".into(), "1".into()),
            (
                "removable".into(),
                if self.cdrom { "1" } else { "0" }.into(),
            ),
            ("bootable".into(), "1".into()),
            ("state".into(), state::INITIALISING.to_string()),
            ("dev".into(), self.vdev.clone()),
            ("type".into(), self.backendtype.clone()),
            ("mode".into(), if self.writable { "w" } else { "r" }.into()),
            ("device-type".into(), dtype.into()),
            (
                "discard-enable".into(),
                if self.discard { "1" } else { "0" }.into(),
            ),
            ("specification".into(), "xen".into()),
        ]);
        Ok(DeviceSpec {
            device: Device {
                class: "vbd".into(),
                backend_class: if qdisk { "qdisk" } else { "vbd" }.into(),
                frontend: self.frontend,
                backend: self.backend,
                devid,
            },
            frontend_keys: fe,
            backend_keys: be,
        })
    }
}

/// How [`Toolstack::remove_device_with`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetachOptions {
    /// How long to wait for Closed.
    pub timeout: Duration,
    /// On timeout, remove the nodes anyway (and still report the error) — what libxl does
    /// after its forced retry. Without it the nodes stay for inspection.
    pub force: bool,
    /// Remove the backend directory of a driver-domain backend too, as a stand-in for a
    /// driver domain that does not. Real libxl in dom0 leaves it to the driver domain
    /// (`xl devd`; our bus does it: `libxl__device_destroy` removes the backend path only in
    /// the backend's own domain) and waits `timeout` for it to go. Default `false`, as
    /// libxl: the lab showed real libxl timing out on a storage domain that did not.
    pub remove_driver_domain_backend: bool,
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

    // -----------------------------------------------------------------------------------------
    // xl create

    /// `xl create`: a simulated domain `name`, the nodes `libxl__domain_make` and
    /// `libxl__build_post` write (see the crate docs' table), its xenstore page and port
    /// built and introduced to xenstored, and the console nodes. The guest connects with
    /// [`Guest::xs_client`].
    pub fn create_domain(&self, name: &str, config: DomainConfig) -> Result<Guest> {
        self.check_name(name)?;
        let domain = match config.domid {
            Some(id) => self.hv.create_domain_with_id(id, name)?,
            None => self.hv.try_create_domain(name)?,
        };
        match self.build_domain(&domain, name, &config) {
            Ok(g) => Ok(g),
            Err(e) => {
                let _ = self.xenstored().destroy_domain(domain.id());
                Err(e)
            }
        }
    }

    /// `libxl__domain_rename`'s check: no other domain has this name.
    fn check_name(&self, name: &str) -> Result<()> {
        let mut xs = lock(&self.xs);
        let doms = match xs.directory("/local/domain") {
            Ok(d) => d,
            Err(XsClientError::Xs(XsError::Enoent)) => Vec::new(),
            Err(e) => return Err(Error::xs("directory", "/local/domain")(e)),
        };
        for d in doms {
            let p = format!("/local/domain/{d}/name");
            if let Ok(Some(v)) = xs.try_read(&p) {
                if v == name.as_bytes() {
                    return Err(Error::NameInUse(name.to_string()));
                }
            }
        }
        Ok(())
    }

    fn build_domain(&self, domain: &Domain, name: &str, config: &DomainConfig) -> Result<Guest> {
        let n = domain.id();
        let dom = dom_path(n);
        let uuid = config.uuid.clone().unwrap_or_else(|| make_uuid(n));
        let vm = format!("/vm/{uuid}");
        let libxl = format!("/libxl/{n}");
        let ro = perms(&[(Access::None, 0), (Access::Read, n)]);
        let rw = perms(&[(Access::None, n)]);
        let none = perms(&[(Access::None, 0)]);

        // libxl__domain_make.
        let mut ops = vec![
            Op::Rm(dom.clone()),
            Op::Mknod(dom.clone(), ro.clone()),
            Op::Rm(vm.clone()),
            Op::Mknod(vm.clone(), ro.clone()),
            Op::Rm(libxl.clone()),
            Op::Mknod(libxl.clone(), none.clone()),
            Op::Mknod(format!("{libxl}/device"), none.clone()),
            Op::Write(format!("{dom}/vm"), vm.clone()),
            Op::Write(format!("{dom}/name"), name.to_string()),
            Op::Write(
                format!("{dom}/control/platform-feature-multiprocessor-suspend"),
                "1".into(),
            ),
            Op::Write(
                format!("{dom}/control/platform-feature-xs_reset_watches"),
                "1".into(),
            ),
        ];
        for k in [
            "control/shutdown",
            "control/feature-poweroff",
            "control/feature-reboot",
            "control/feature-suspend",
            "control/sysrq",
            "data",
            "drivers",
            "feature",
            "attr",
            "error",
        ] {
            ops.push(Op::Mknod(format!("{dom}/{k}"), rw.clone()));
        }
        if config.driver_domain {
            ops.push(Op::Mknod(format!("{dom}/libxl"), rw.clone()));
            ops.push(Op::Mknod(format!("{dom}/device-model"), rw.clone()));
        }
        ops.push(Op::Mknod(
            format!("{dom}/device/suspend/event-channel"),
            rw.clone(),
        ));
        ops.push(Op::Write(format!("{vm}/uuid"), uuid.clone()));
        ops.push(Op::Write(format!("{vm}/name"), name.to_string()));
        ops.push(Op::Write(format!("{libxl}/type"), "pv".into()));
        self.transact("libxl__domain_make", &ops)?;

        // The domain builder: the xenstore page, its reserved grant and unbound port.
        let store = SimGuest::build(domain)?;

        // libxl__build_post.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{}.{:02}", d.as_secs(), d.subsec_millis() / 10))
            .unwrap_or_else(|_| "0.00".into());
        let target = config
            .target_memory_kib
            .saturating_sub(config.video_memory_kib);
        let mut ops = vec![
            Op::Write(
                format!("{dom}/memory/static-max"),
                config.max_memory_kib.to_string(),
            ),
            Op::Write(format!("{dom}/memory/target"), target.to_string()),
            Op::Write(
                format!("{dom}/memory/videoram"),
                config.video_memory_kib.to_string(),
            ),
            Op::Write(format!("{dom}/domid"), n.to_string()),
            Op::Write(format!("{dom}/store/port"), store.port().to_string()),
            Op::Write(format!("{dom}/store/ring-ref"), store.frame().to_string()),
        ];
        for i in 0..config.vcpus.max(1) {
            ops.push(Op::Write(
                format!("{dom}/cpu/{i}/availability"),
                "online".into(),
            ));
        }
        ops.push(Op::Write(format!("{vm}/start_time"), start));
        self.transact("libxl__build_post", &ops)?;

        // xs_introduce_domain.
        self.xenstored()
            .introduce_domain(n, store.port())
            .map_err(|e| Error::xs("introduce", dom.clone())(XsClientError::Xs(e)))?;

        // The primary console (libxl__device_console_add): dom0's, readable by the guest.
        self.transact(
            "console",
            &[
                Op::Write(format!("{dom}/console/backend-id"), "0".into()),
                Op::Write(format!("{dom}/console/limit"), "1048576".into()),
                Op::Write(format!("{dom}/console/type"), "xenconsoled".into()),
                Op::Write(format!("{dom}/console/output"), "pty".into()),
                Op::Write(format!("{dom}/console/tty"), String::new()),
            ],
        )?;

        let (store_port, store_frame) = (store.port(), store.frame());
        Ok(Guest {
            domain: domain.clone(),
            uuid,
            store_port,
            store_frame,
            ring: Mutex::new(Some(store.transport()?)),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Devices

    /// `xl block-attach` (and `xl create`'s `disk=`): [`Toolstack::add_device`] with the
    /// keys of [`Vbd::spec`]. Returns the device (its devid is the vdev's number).
    pub fn add_vbd(&self, vbd: &Vbd) -> Result<Device> {
        self.add_device(&vbd.spec()?)
    }

    /// `libxl__device_generic_add` in one transaction: the frontend directory (removed
    /// first) `(n<fe>,r<be>)` with `backend` and the frontend keys, the backend directory
    /// (removed first) `(n<be>,r<fe>)` with `frontend` and the backend keys, and libxl's
    /// copy of the backend keys under `/libxl/<fe>/device/...`. Parents created on the way
    /// inherit their parent's permissions (see the crate docs). Does not wait for the
    /// backend ([`Toolstack::wait_state`] does).
    pub fn add_device(&self, spec: &DeviceSpec) -> Result<Device> {
        let d = &spec.device;
        let (fe, be) = (d.frontend, d.backend);
        let (fp, bp, lp) = (d.frontend_path(), d.backend_path(), d.libxl_path());
        let fperms = perms(&[(Access::None, fe), (Access::Read, be)]);
        let bperms = perms(&[(Access::None, be), (Access::Read, fe)]);
        let mut ops = vec![
            Op::Rm(fp.clone()),
            Op::Write(fp.clone(), String::new()),
            Op::SetPerms(fp.clone(), fperms),
            Op::Write(format!("{fp}/backend"), bp.clone()),
        ];
        for (k, v) in &spec.frontend_keys {
            ops.push(Op::Write(format!("{fp}/{k}"), v.clone()));
        }
        ops.push(Op::Rm(bp.clone()));
        ops.push(Op::Write(bp.clone(), String::new()));
        ops.push(Op::SetPerms(bp.clone(), bperms));
        ops.push(Op::Write(format!("{bp}/frontend"), fp.clone()));
        for (k, v) in &spec.backend_keys {
            ops.push(Op::Write(format!("{bp}/{k}"), v.clone()));
        }
        for (k, v) in &spec.backend_keys {
            ops.push(Op::Write(format!("{lp}/{k}"), v.clone()));
        }
        self.transact("libxl__device_generic_add", &ops)?;
        Ok(d.clone())
    }

    /// `xl block-attach` as libxl completes it: [`add_vbd`](Self::add_vbd), then
    /// [`attach_wait`](Self::attach_wait).
    pub fn attach_vbd(&self, vbd: &Vbd, timeout: Duration) -> Result<Device> {
        let d = self.add_vbd(vbd)?;
        self.attach_wait(&d, timeout)?;
        Ok(d)
    }

    /// What libxl does after writing a device (`libxl__wait_device_connection`): wait up to
    /// `timeout` (libxl's `LIBXL_INIT_TIMEOUT` is 10 s) for the backend to reach InitWait
    /// (2) — or any later state. For a backend in dom0 libxl then runs the hotplug script;
    /// here that script's result is written: `hotplug-status=connected` in the backend
    /// directory (not `node`/`physical-device`, which name a Linux block device). For a
    /// driver-domain backend dom0 waits for InitWait only ("assuming driver domains").
    /// On timeout: [`Error::DeviceAddTimeout`] and the nodes stay.
    pub fn attach_wait(&self, dev: &Device, timeout: Duration) -> Result<()> {
        let bstate = format!("{}/state", dev.backend_path());
        let mut last = None;
        let ok = self.wait_for(&[&bstate], timeout, |xs| {
            last = read_u32(xs, &bstate)?;
            Ok(last.is_some_and(|s| s >= state::INIT_WAIT))
        })?;
        if !ok {
            return Err(Error::DeviceAddTimeout {
                backend_path: dev.backend_path(),
                backend_state: last,
            });
        }
        if dev.backend == 0 {
            let p = format!("{}/hotplug-status", dev.backend_path());
            lock(&self.xs)
                .write(&p, b"connected")
                .map_err(Error::xs("write", p.clone()))?;
        }
        Ok(())
    }

    /// The devices of frontend domain `fe` (from libxl's `/libxl/<fe>/device`), each with
    /// its backend domain read from the frontend's `backend` key.
    pub fn devices(&self, fe: DomId) -> Result<Vec<Device>> {
        let mut xs = lock(&self.xs);
        let root = format!("/libxl/{fe}/device");
        let classes = match xs.directory(&root) {
            Ok(c) => c,
            Err(XsClientError::Xs(XsError::Enoent)) => return Ok(Vec::new()),
            Err(e) => return Err(Error::xs("directory", root)(e)),
        };
        let mut out = Vec::new();
        for class in classes {
            let p = format!("{root}/{class}");
            let ids = match xs.directory(&p) {
                Ok(i) => i,
                Err(XsClientError::Xs(XsError::Enoent)) => continue,
                Err(e) => return Err(Error::xs("directory", p)(e)),
            };
            for id in ids {
                let Ok(devid) = id.parse::<u32>() else {
                    continue;
                };
                let mut d = Device {
                    class: class.clone(),
                    backend_class: class.clone(),
                    frontend: fe,
                    backend: 0,
                    devid,
                };
                let bkey = format!("{}/backend-id", d.frontend_path());
                if let Ok(Some(v)) = xs.try_read(&bkey) {
                    if let Some(b) = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()) {
                        d.backend = b;
                    }
                }
                let pkey = format!("{}/backend", d.frontend_path());
                if let Ok(Some(v)) = xs.try_read(&pkey) {
                    if let Some(c) = std::str::from_utf8(&v).ok().and_then(backend_class_of) {
                        d.backend_class = c;
                    }
                }
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The device `class`/`devid` of frontend `fe`, its backend found from the frontend's
    /// `backend` key (`/local/domain/<be>/backend/...`).
    pub fn device(&self, class: &str, fe: DomId, devid: u32) -> Result<Device> {
        let fp = format!("{}/device/{class}/{devid}/backend", dom_path(fe));
        let v = lock(&self.xs)
            .try_read(&fp)
            .map_err(Error::xs("read", fp.clone()))?
            .ok_or_else(|| Error::NoSuchDevice(fp.clone()))?;
        let s = String::from_utf8(v).map_err(|_| Error::NoSuchDevice(fp.clone()))?;
        let be = s
            .strip_prefix("/local/domain/")
            .and_then(|r| r.split('/').next())
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| Error::NoSuchDevice(fp.clone()))?;
        Ok(Device {
            class: class.to_string(),
            backend_class: backend_class_of(&s).unwrap_or_else(|| class.to_string()),
            frontend: fe,
            backend: be,
            devid,
        })
    }

    /// `xl block-detach <fe> <vdev>` with the default [`DetachOptions`] (libxl's timeout
    /// from [`Timeouts::device_remove`], not forced).
    pub fn block_detach(&self, fe: DomId, vdev: &str) -> Result<()> {
        let devid = vdev_to_devid(vdev).ok_or_else(|| Error::BadVdev(vdev.to_string()))?;
        let d = self.device("vbd", fe, devid)?;
        self.remove_device(&d)
    }

    /// [`remove_device_with`](Self::remove_device_with) with the default options.
    pub fn remove_device(&self, dev: &Device) -> Result<()> {
        self.remove_device_with(dev, self.detach_options())
    }

    /// The default [`DetachOptions`]: [`Timeouts::device_remove`], not forced, a driver
    /// domain's backend directory left to the driver domain.
    pub fn detach_options(&self) -> DetachOptions {
        DetachOptions {
            timeout: self.timeouts().device_remove,
            force: false,
            remove_driver_domain_backend: false,
        }
    }

    /// `libxl__initiate_device_generic_remove`: unless the backend is gone, write backend
    /// `online=0` and, unless it is already Closed, `state=5` (Closing), in one
    /// transaction; wait up to `opts.timeout` for the backend and the frontend to reach
    /// Closed (6; a missing `state` counts as closed — libxl itself waits for the backend
    /// only). A driver domain's backend: wait up to `opts.timeout` more for the driver
    /// domain to remove the backend directory (libxl's `device_hotplug`, "removal of
    /// backend path"). Then `libxl__device_destroy`: remove the frontend directory,
    /// libxl's copy and a dom0 backend's directory, each with its parents that became
    /// empty (`libxl__xs_path_cleanup`).
    ///
    /// On timeout: [`Error::DeviceRemoveTimeout`] (`unable to remove device with path
    /// <backend>`); with `opts.force` the nodes are removed first, otherwise they stay.
    /// A driver domain that leaves its backend directory: [`Error::BackendNotRemoved`], the
    /// other nodes removed.
    pub fn remove_device_with(&self, dev: &Device, opts: DetachOptions) -> Result<()> {
        let (fp, bp) = (dev.frontend_path(), dev.backend_path());
        let (fstate, bstate) = (format!("{fp}/state"), format!("{bp}/state"));
        let closed = |v: Option<u32>| v.is_none_or(|s| s == state::CLOSED);
        let start = {
            let mut xs = lock(&self.xs);
            xs.transact(|tx| {
                let Some(be) = read_u32(tx, &bstate)? else {
                    return Ok(false); // "backend already removed, cleanup frontend only"
                };
                tx.write(&format!("{bp}/online"), b"0")?;
                if be == state::CLOSED {
                    return Ok(false);
                }
                tx.write(&bstate, state::CLOSING.to_string().as_bytes())?;
                Ok(true)
            })
            .map_err(Error::xs("transaction", bp.clone()))?
        };
        if start {
            let mut last = (None, None);
            let ok = self.wait_for(&[&fstate, &bstate], opts.timeout, |xs| {
                let f = read_u32(xs, &fstate)?;
                let b = read_u32(xs, &bstate)?;
                last = (f, b);
                Ok(closed(f) && closed(b))
            })?;
            if !ok {
                if opts.force {
                    self.destroy_device_nodes(dev, opts.remove_driver_domain_backend)?;
                }
                return Err(Error::DeviceRemoveTimeout {
                    backend_path: bp,
                    frontend_state: last.0,
                    backend_state: last.1,
                    cleaned_up: opts.force,
                });
            }
        }
        if dev.backend != 0 && !opts.remove_driver_domain_backend {
            let gone = self.wait_for(&[&bp], opts.timeout, |xs| Ok(xs.try_read(&bp)?.is_none()))?;
            if !gone {
                self.destroy_device_nodes(dev, false)?;
                return Err(Error::BackendNotRemoved { backend_path: bp });
            }
        }
        self.destroy_device_nodes(dev, opts.remove_driver_domain_backend)
    }

    /// `libxl__device_destroy`: in one transaction, remove the frontend directory, libxl's
    /// copy and the backend directory, each with the parents that became empty.
    fn destroy_device_nodes(&self, dev: &Device, remove_dd_backend: bool) -> Result<()> {
        let (fp, bp, lp) = (dev.frontend_path(), dev.backend_path(), dev.libxl_path());
        let with_be = dev.backend == 0 || remove_dd_backend;
        let mut xs = lock(&self.xs);
        xs.transact(|tx| {
            path_cleanup(tx, &fp)?;
            path_cleanup(tx, &lp)?;
            if with_be {
                path_cleanup(tx, &bp)?;
            }
            Ok(())
        })
        .map_err(Error::xs("transaction", fp.clone()))
    }

    /// Wait up to `timeout` until `state` of the device's frontend (`frontend == true`) or
    /// backend is `want`. Returns the state seen last (`Ok(Some(want))` when reached).
    pub fn wait_state(
        &self,
        dev: &Device,
        frontend: bool,
        want: u32,
        timeout: Duration,
    ) -> Result<Option<u32>> {
        let p = if frontend {
            dev.frontend_path()
        } else {
            dev.backend_path()
        } + "/state";
        let mut last = None;
        self.wait_for(&[&p], timeout, |xs| {
            last = read_u32(xs, &p)?;
            Ok(last == Some(want))
        })?;
        Ok(last)
    }

    /// Wait up to `timeout` until `done` (run on a dom0 connection of the wait's own) is true:
    /// the nodes in `watch` are watched, and `done` is run at first, on every event and at
    /// least every 50 ms. `Ok(false)` on timeout.
    pub fn wait_for(
        &self,
        watch: &[&str],
        timeout: Duration,
        mut done: impl FnMut(&mut Dom0Client) -> std::result::Result<bool, XsClientError>,
    ) -> Result<bool> {
        let mut xs = self.dom0_client()?;
        for (i, p) in watch.iter().enumerate() {
            xs.watch(p, &format!("w{i}"))
                .map_err(Error::xs("watch", p.to_string()))?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            while xs.take_watch_event(None).is_some() {}
            if done(&mut xs).map_err(Error::xs("wait", watch.join(" ")))? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            xs.next_watch_event(None, (deadline - now).min(POLL))
                .map_err(Error::xs("wait", watch.join(" ")))?;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Shutdown, reboot, destroy

    /// `libxl__domain_pvcontrol`: write `cmd` to `control/shutdown` and wait up to
    /// [`Timeouts::control_ack`] for the guest to acknowledge (the node empty or removed).
    /// On timeout: [`Error::GuestDidntAcknowledge`] (libxl: "guest didn't acknowledge
    /// control request: -9"); the node keeps `cmd`.
    pub fn pvcontrol(&self, domid: DomId, cmd: &str) -> Result<()> {
        if self.hv.domain(domid).is_none() {
            return Err(Error::NoSuchDomain(domid));
        }
        let path = format!("{}/control/shutdown", dom_path(domid));
        lock(&self.xs)
            .write(&path, cmd.as_bytes())
            .map_err(Error::xs("write", path.clone()))?;
        let acked = self.wait_for(&[&path], self.timeouts().control_ack, |xs| {
            Ok(xs.try_read(&path)?.is_none_or(|v| v.is_empty()))
        })?;
        if acked {
            Ok(())
        } else {
            Err(Error::GuestDidntAcknowledge {
                domid,
                cmd: cmd.to_string(),
                rc: ERROR_TIMEDOUT,
            })
        }
    }

    /// `xl shutdown -w`: [`pvcontrol`](Self::pvcontrol) `poweroff`, then wait up to
    /// [`Timeouts::shutdown`] for the domain to shut down with reason poweroff.
    pub fn shutdown(&self, domid: DomId) -> Result<()> {
        self.control(domid, "poweroff", ShutdownReason::Poweroff)
    }

    /// `xl reboot -w`: [`pvcontrol`](Self::pvcontrol) `reboot`, then wait for the domain to
    /// shut down with reason reboot (it is not re-created).
    pub fn reboot(&self, domid: DomId) -> Result<()> {
        self.control(domid, "reboot", ShutdownReason::Reboot)
    }

    fn control(&self, domid: DomId, cmd: &str, expected: ShutdownReason) -> Result<()> {
        let dom = self.hv.domain(domid).ok_or(Error::NoSuchDomain(domid))?;
        self.pvcontrol(domid, cmd)?;
        let got = dom.wait_shutdown(Some(self.timeouts().shutdown));
        if got == Some(expected) {
            Ok(())
        } else {
            Err(Error::ShutdownTimeout {
                domid,
                expected,
                got,
            })
        }
    }

    /// `xl destroy`: remove every device of the domain by force (backend `online=0`, no
    /// wait; the frontend, libxl and backend nodes removed as [`remove_device_with`]
    /// does), remove `/vm/<uuid>`, `/local/domain/<domid>` and `/libxl/<domid>`, then destroy
    /// the simulated domain and let xenstored release it (its remaining nodes go,
    /// `@releaseDomain` fires) before returning.
    ///
    /// [`remove_device_with`]: Self::remove_device_with
    pub fn destroy(&self, domid: DomId) -> Result<()> {
        if domid == 0 {
            return Err(Error::Sim(xen_sim::Error::Invalid));
        }
        if self.hv.domain(domid).is_none() {
            return Err(Error::NoSuchDomain(domid));
        }
        for d in self.devices(domid)? {
            let online = format!("{}/online", d.backend_path());
            {
                let mut xs = lock(&self.xs);
                if let Ok(Some(_)) = xs.try_read(&online) {
                    let _ = xs.write(&online, b"0");
                }
            }
            self.destroy_device_nodes(&d, true)?;
        }
        let dom = dom_path(domid);
        {
            let mut xs = lock(&self.xs);
            let vm = xs
                .try_read(&format!("{dom}/vm"))
                .map_err(Error::xs("read", format!("{dom}/vm")))?;
            let mut paths = Vec::new();
            if let Some(vm) = vm.and_then(|v| String::from_utf8(v).ok()) {
                if vm.starts_with("/vm/") {
                    paths.push(vm);
                }
            }
            paths.push(dom.clone());
            paths.push(format!("/libxl/{domid}"));
            for p in paths {
                match xs.rm(&p) {
                    Ok(()) | Err(XsClientError::Xs(XsError::Enoent)) => {}
                    Err(e) => return Err(Error::xs("rm", p)(e)),
                }
            }
        }
        self.xenstored().destroy_domain(domid)?;
        Ok(())
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
