//! Debian's real C xenstored (Xen 4.17) as a test peer, without a hypervisor.
//!
//! `ci/real-xenstored/start RUNDIR` runs the unmodified daemon under an `LD_PRELOAD` shim
//! (`fakexen.c`) that replaces only its hypervisor calls (see `ci/real-xenstored/README.md`):
//! * dom0 is any connection to `RUNDIR/socket` ([`RealXenstored::dom0`]);
//! * domain N's ring page is the 4096-byte file `RUNDIR/domN.xs`, mapped `MAP_SHARED` by the
//!   daemon and by us ([`RealXenstored::domu`]); its event channel is a pair of `AF_UNIX`
//!   datagram sockets: the daemon sends `{u32 port}` to `RUNDIR/domN.evtchn.sock` (bound by
//!   us), we send `{u32 domid, u32 port}` to `RUNDIR/evtchn.sock` ([`ShimEvents`]);
//! * domain death is `RUNDIR/domN.dead` plus `{0xffffffff, VIRQ_DOM_EXC}` to `evtchn.sock`
//!   ([`RealXenstored::kill_domain`]).
//!
//! Each [`RealXenstored`] is a daemon of its own in a fresh temporary RUNDIR, killed (by its
//! pid) and cleaned up on drop, so tests running in parallel threads never share state.
//!
//! # When the daemon cannot run
//! It needs root, gcc, and the packages `xen-utils-4.17` + `libxen-dev` (the start script
//! installs them when missing). If it cannot start, [`RealXenstored::for_test`] *fails the
//! test* with the reason — unless `XENOLITH_SKIP_REAL_XENSTORED=1` is set, in which case it
//! prints a loud `SKIPPED:` line and the test returns. Nothing passes silently.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xen_platform::xs_ring::XsGuestRing;
use xen_platform::{Clock, Error as PlatformError, Events, Result as PlatformResult};
use xen_store::client::{Client, ClientConfig, Transport};
use xen_store::{DomId, EvtchnPort};

use crate::conformance::{Limits, Peer, PeerClient};
use crate::{OwnedRing, UnixTransport};

/// The environment variable that turns "the real daemon cannot run here" from a test failure
/// into a loud skip.
pub const SKIP_ENV: &str = "XENOLITH_SKIP_REAL_XENSTORED";

/// `ci/real-xenstored/start`, found from this crate's directory (`store/host`).
pub fn start_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ci/real-xenstored/start")
}

/// `VIRQ_DOM_EXC` (xen.h): "Exceptional event for some domain", which makes xenstored look
/// for dying domains (`domain_cleanup()` via `handle_event()`).
const VIRQ_DOM_EXC: u32 = 3;
/// fakexen's marker for a VIRQ in the `{domid, port}` datagram (`FAKE_VIRQ_DOMID`).
const FAKE_VIRQ_DOMID: u32 = 0xffff_ffff;
/// The guest-side port we give in `XS_INTRODUCE` (any value: fakexen routes the daemon's
/// notifications by domid to `domN.evtchn.sock` and hands the port back in the datagram).
const GUEST_PORT: EvtchnPort = 1;
/// Size of the ring page file (`xenstore_domain_interface` fits a 4 KiB page).
const PAGE: usize = 4096;
/// How long a client request may take against the daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The real xenstored in its own RUNDIR. See the [module docs](self).
#[derive(Debug)]
pub struct RealXenstored {
    rundir: PathBuf,
    pid: u32,
    limits: Limits,
}

/// Serialises daemon starts until one has succeeded: the first start may run `apt-get`
/// (which cannot run twice at once) and builds the shim we then reuse.
static FIRST_START: Mutex<()> = Mutex::new(());
static STARTED_ONCE: AtomicBool = AtomicBool::new(false);
/// The shim built by the first start of this process, copied into later RUNDIRs (the start
/// script only compiles `libfakexen.so` when RUNDIR has none).
static SHIM: OnceLock<Vec<u8>> = OnceLock::new();
static RUNDIR_SEQ: AtomicU64 = AtomicU64::new(0);

impl RealXenstored {
    /// Start a daemon with xenstored's default quotas.
    pub fn start() -> Result<RealXenstored, String> {
        Self::start_with(Limits::DEFAULT)
    }

    /// Start a daemon with `limits` (passed as `XENSTORED_EXTRA_ARGS`, e.g.
    /// `-E 6 -W 2 -t 2 -S 64` for [`Limits::SMALL`]).
    pub fn start_with(limits: Limits) -> Result<RealXenstored, String> {
        if STARTED_ONCE.load(Ordering::Acquire) {
            return Self::spawn(limits);
        }
        let _g = FIRST_START.lock().unwrap_or_else(|e| e.into_inner());
        let r = Self::spawn(limits);
        if r.is_ok() {
            STARTED_ONCE.store(true, Ordering::Release);
        }
        r
    }

    /// For a test: the daemon, or — when it cannot start — a panic with the reason, or, with
    /// `XENOLITH_SKIP_REAL_XENSTORED=1`, a loud `SKIPPED:` message and `None`.
    pub fn for_test(test: &str, limits: Limits) -> Option<RealXenstored> {
        match Self::start_with(limits) {
            Ok(xs) => Some(xs),
            Err(e) => {
                skip_or_fail(
                    test,
                    &format!("the real xenstored could not be started: {e}"),
                );
                None
            }
        }
    }

    fn spawn(limits: Limits) -> Result<RealXenstored, String> {
        let script = start_script();
        if !script.exists() {
            return Err(format!("{} not found", script.display()));
        }
        let rundir = fresh_rundir()?;
        if let Some(shim) = SHIM.get() {
            // Best effort: without it the script compiles the shim itself.
            let _ = fs::write(rundir.join("libfakexen.so"), shim);
        }
        let out = Command::new(&script)
            .arg(&rundir)
            .env("XENSTORED_EXTRA_ARGS", limits.xenstored_args())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pid = stdout
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|_| out.status.success());
        let Some(pid) = pid else {
            let _ = fs::remove_dir_all(&rundir);
            let root = if is_root() {
                ""
            } else {
                " (not running as root: the script needs root to install xen-utils-4.17 and libxen-dev)"
            };
            return Err(format!(
                "{} {} failed ({}){root}; stdout: {:?}; stderr: {}",
                script.display(),
                rundir.display(),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        };
        if SHIM.get().is_none() {
            if let Ok(b) = fs::read(rundir.join("libfakexen.so")) {
                let _ = SHIM.set(b);
            }
        }
        Ok(RealXenstored {
            rundir,
            pid,
            limits,
        })
    }

    /// The daemon's RUNDIR.
    pub fn rundir(&self) -> &Path {
        &self.rundir
    }

    /// The dom0 socket (`RUNDIR/socket`).
    pub fn socket(&self) -> PathBuf {
        self.rundir.join("socket")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The quotas it was started with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the daemon process is still running (not gone, not a zombie).
    pub fn is_alive(&self) -> bool {
        process_alive(self.pid)
    }

    /// A new dom0 (privileged) connection over the socket.
    pub fn try_dom0(&self) -> std::io::Result<Client<UnixTransport>> {
        let t = UnixTransport::connect(self.socket())?;
        Ok(Client::with_config(t, client_config()))
    }

    /// A new dom0 connection; panics if the socket refuses.
    pub fn dom0(&self) -> Client<UnixTransport> {
        self.try_dom0()
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket().display()))
    }

    /// Make domain `domid` exist for the daemon and connect to it as that domain over a real
    /// shared ring: create and map the zeroed page file `domN.xs`, bind `domN.evtchn.sock`,
    /// and `XS_INTRODUCE` it as dom0 (which fires `@introduceDomain`).
    pub fn try_domu(&self, domid: DomId) -> Result<Client<OwnedRing<ShimEvents>>, String> {
        let page_path = self.rundir.join(format!("dom{domid}.xs"));
        let map = RingMap::create(&page_path)?;
        let events = ShimEvents::bind(&self.rundir, domid, GUEST_PORT)?;
        let mut dom0 = self.try_dom0().map_err(|e| format!("dom0 socket: {e}"))?;
        // The mfn is not used by xenstored 4.17 (it maps GNTTAB_RESERVED_XENSTORE), any
        // value will do.
        dom0.introduce(domid, 0x1000 + u64::from(domid), GUEST_PORT)
            .map_err(|e| format!("XS_INTRODUCE {domid}: {e}"))?;
        // SAFETY: `map` is a live MAP_SHARED read/write mapping of 4096 bytes, page aligned;
        // it moves into the OwnedRing below, which drops it only after the XsGuestRing. The
        // other party writing the page is the daemon (another process), which is what
        // XsGuestRing is built for; no Rust reference to the page is ever made, and this is
        // the only guest-side wrapper of this page.
        let ring = unsafe { XsGuestRing::new(map.ptr) }
            .map_err(|e| format!("ring page of dom{domid}: {e}"))?;
        let mut t = OwnedRing::new(ring, events, GUEST_PORT, Box::new(map));
        t.connect(REQUEST_TIMEOUT)
            .map_err(|e| format!("ring of dom{domid}: {e}"))?;
        Ok(Client::with_config(t, client_config()))
    }

    /// [`try_domu`](Self::try_domu), panicking on failure.
    pub fn domu(&self, domid: DomId) -> Client<OwnedRing<ShimEvents>> {
        self.try_domu(domid)
            .unwrap_or_else(|e| panic!("domU {domid}: {e}"))
    }

    /// Domain death as the hypervisor reports it: `domN.dead` makes `xc_domain_getinfo()`
    /// say "dying", and `VIRQ_DOM_EXC` makes the daemon look. It then fires `@releaseDomain`
    /// and removes the nodes the domain owned.
    pub fn kill_domain(&self, domid: DomId) {
        let dead = self.rundir.join(format!("dom{domid}.dead"));
        File::create(&dead).unwrap_or_else(|e| panic!("create {}: {e}", dead.display()));
        let s = UnixDatagram::unbound().expect("datagram socket");
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&FAKE_VIRQ_DOMID.to_le_bytes());
        msg[4..].copy_from_slice(&VIRQ_DOM_EXC.to_le_bytes());
        let to = self.rundir.join("evtchn.sock");
        s.send_to(&msg, &to)
            .unwrap_or_else(|e| panic!("VIRQ_DOM_EXC to {}: {e}", to.display()));
    }
}

impl Drop for RealXenstored {
    fn drop(&mut self) {
        // Only the process we started, by its pid.
        let _ = Command::new("kill")
            .arg(self.pid.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while process_alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = fs::remove_dir_all(&self.rundir);
    }
}

impl Peer for RealXenstored {
    fn name(&self) -> &str {
        "real xenstored 4.17"
    }

    fn dom0(&self) -> PeerClient {
        let t = UnixTransport::connect(self.socket())
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket().display()));
        Client::with_config(Box::new(t) as Box<dyn Transport + Send>, client_config())
    }

    fn domu(&self, domid: DomId) -> PeerClient {
        let c = RealXenstored::domu(self, domid);
        let cfg = *c.config();
        Client::with_config(
            Box::new(c.into_transport()) as Box<dyn Transport + Send>,
            cfg,
        )
    }

    fn kill_domain(&self, domid: DomId) {
        RealXenstored::kill_domain(self, domid);
    }

    fn limits(&self) -> Limits {
        self.limits
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        timeout: REQUEST_TIMEOUT,
        ..ClientConfig::default()
    }
}

/// Fail the calling test with `why`, or — with `XENOLITH_SKIP_REAL_XENSTORED=1` — print a loud
/// skip notice and return (the caller then returns too).
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("\n*** SKIPPED: {test}: {why} ({SKIP_ENV}=1) ***\n");
        println!("SKIPPED: {test}: {why}");
        return;
    }
    panic!(
        "{test}: {why}\n  The real-xenstored tests need root, gcc and Debian's xen-utils-4.17, \
         libxen-dev and xenstore-utils (ci/test installs them). Set {SKIP_ENV}=1 to skip \
         them explicitly."
    );
}

fn is_root() -> bool {
    // /proc/self/status "Uid:\t<real>\t<effective>..."
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether `pid` runs (exists and is not a zombie). The daemon is not our child (the start
/// script detaches it with `setsid` and exits), so we cannot wait for it; /proc tells.
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A new empty directory for one daemon. Socket paths must stay under 108 bytes, so it is
/// short and under the temp dir.
fn fresh_rundir() -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = RUNDIR_SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xsd-{}-{n}-{nanos:x}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// The ring page.

/// The page file `RUNDIR/domN.xs` mapped `MAP_SHARED`: the daemon maps the same file, so the
/// two processes share the page as a guest and xenstored share the xenstore page.
#[derive(Debug)]
struct RingMap {
    ptr: NonNull<u8>,
}

// SAFETY: the mapping is plain shared memory owned by this value; it may be unmapped from any
// thread. All accesses go through XsGuestRing (atomics and volatile copies).
unsafe impl Send for RingMap {}

impl RingMap {
    /// Create (or truncate) the file as 4096 zero bytes and map it.
    fn create(path: &Path) -> Result<RingMap, String> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        f.set_len(PAGE as u64)
            .map_err(|e| format!("size {}: {e}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: mmap with a null hint creates a new mapping and touches no existing memory;
        // the fd is open read/write and the file is PAGE bytes long. The result is checked
        // for MAP_FAILED. The fd may be closed afterwards (the mapping keeps the file).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(RingMap { ptr })
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the start of a PAGE-byte mapping made by `create` and not unmapped
        // since; the XsGuestRing using it was dropped before this (OwnedRing's field order).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), PAGE);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The event channel.

/// A domU's end of its xenstore event channel under the fakexen shim, as
/// [`xen_platform::Events`] + [`Clock`]: a datagram socket bound at `RUNDIR/domN.evtchn.sock`.
///
/// * [`notify`](Events::notify) sends `{u32 domid, u32 port}` to `RUNDIR/evtchn.sock`; a
///   daemon that is gone (nobody bound there) is [`PlatformError::PeerGone`]. A full receive
///   queue drops the datagram: the daemon has earlier notifications of ours to process, and
///   an event channel is a pending *bit* anyway.
/// * Each datagram from the daemon sets the pending bit. [`wait`](Events::wait) returns at
///   once if it is set, else receives with a timeout; [`clear`](Events::clear) drains every
///   queued datagram and clears it — so a notification that arrives after `clear` wakes the
///   next `wait`, the property `SCHEDOP_poll` users rely on.
/// * Allocation, binding, close and masking are not supported (the channel is set up by
///   [`RealXenstored::domu`]).
#[derive(Debug)]
pub struct ShimEvents {
    sock: UnixDatagram,
    daemon: PathBuf,
    domid: DomId,
    port: EvtchnPort,
    pending: AtomicBool,
    /// 0 unknown, 1 blocking, 2 non-blocking.
    mode: AtomicU8,
    t0: Instant,
}

impl ShimEvents {
    /// Bind `RUNDIR/domN.evtchn.sock` (replacing a stale one).
    pub fn bind(rundir: &Path, domid: DomId, port: EvtchnPort) -> Result<ShimEvents, String> {
        let path = rundir.join(format!("dom{domid}.evtchn.sock"));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(format!("remove {}: {e}", path.display()))
            }
            _ => {}
        }
        let sock =
            UnixDatagram::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
        // A notification to a daemon whose queue is full waits at most this long.
        sock.set_write_timeout(Some(Duration::from_millis(20)))
            .map_err(|e| format!("socket option: {e}"))?;
        Ok(ShimEvents {
            sock,
            daemon: rundir.join("evtchn.sock"),
            domid,
            port,
            pending: AtomicBool::new(false),
            mode: AtomicU8::new(0),
            t0: Instant::now(),
        })
    }

    fn set_nonblocking(&self, on: bool) -> bool {
        let want = if on { 2 } else { 1 };
        if self.mode.load(Ordering::Relaxed) == want {
            return true;
        }
        if self.sock.set_nonblocking(on).is_err() {
            return false;
        }
        self.mode.store(want, Ordering::Relaxed);
        true
    }

    /// Receive every queued datagram without waiting; true if there was any.
    fn drain(&self) -> bool {
        if !self.set_nonblocking(true) {
            return false;
        }
        let mut buf = [0u8; 16];
        let mut any = false;
        while self.sock.recv(&mut buf).is_ok() {
            any = true;
        }
        any
    }
}

impl Events for ShimEvents {
    fn alloc_unbound(&self, _remote: DomId) -> PlatformResult<EvtchnPort> {
        Err(PlatformError::Unsupported)
    }

    fn bind_interdomain(&self, _remote: DomId, _port: EvtchnPort) -> PlatformResult<EvtchnPort> {
        Err(PlatformError::Unsupported)
    }

    fn notify(&self, port: EvtchnPort) -> PlatformResult<()> {
        if port != self.port {
            return Err(PlatformError::NotFound);
        }
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&u32::from(self.domid).to_le_bytes());
        msg[4..].copy_from_slice(&port.to_le_bytes());
        match self.sock.send_to(&msg, &self.daemon) {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => Ok(()),
                ErrorKind::ConnectionRefused | ErrorKind::NotFound => Err(PlatformError::PeerGone),
                _ => Err(PlatformError::Invalid),
            },
        }
    }

    fn close(&self, _port: EvtchnPort) -> PlatformResult<()> {
        Err(PlatformError::Unsupported)
    }

    fn mask(&self, _port: EvtchnPort) -> PlatformResult<()> {
        Err(PlatformError::Unsupported)
    }

    fn unmask(&self, _port: EvtchnPort) -> PlatformResult<()> {
        Err(PlatformError::Unsupported)
    }

    fn is_pending(&self, port: EvtchnPort) -> bool {
        if port != self.port {
            return false;
        }
        if self.drain() {
            self.pending.store(true, Ordering::Release);
        }
        self.pending.load(Ordering::Acquire)
    }

    fn clear(&self, port: EvtchnPort) -> bool {
        if port != self.port {
            return false;
        }
        let drained = self.drain();
        self.pending.swap(false, Ordering::AcqRel) || drained
    }

    fn wait(&self, ports: &[EvtchnPort], timeout: Option<Duration>) -> PlatformResult<EvtchnPort> {
        if !ports.contains(&self.port) {
            return Err(PlatformError::Invalid);
        }
        if self.pending.load(Ordering::Acquire) {
            return Ok(self.port);
        }
        if timeout.is_some_and(|t| t.is_zero()) {
            return if self.drain() {
                self.pending.store(true, Ordering::Release);
                Ok(self.port)
            } else {
                Err(PlatformError::Timeout)
            };
        }
        if !self.set_nonblocking(false) || self.sock.set_read_timeout(timeout).is_err() {
            return Err(PlatformError::Invalid);
        }
        let mut buf = [0u8; 16];
        match self.sock.recv(&mut buf) {
            Ok(_) => {
                self.pending.store(true, Ordering::Release);
                Ok(self.port)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(PlatformError::Timeout)
            }
            // EINTR: a spurious wakeup, which callers of wait() tolerate (they look again).
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(self.port),
            Err(_) => Err(PlatformError::Invalid),
        }
    }
}

impl Clock for ShimEvents {
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }
}
