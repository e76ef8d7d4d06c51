//! `xen-sim`: a Xen hypervisor in one process, for host tests and demos.
//!
//! A [`Hypervisor`] hosts several domains. Each [`Domain`] handle implements every platform
//! trait ([`xen_platform::Platform`]), so the same driver code that runs in a Xen image runs
//! here, against peers that are other domains of the same hypervisor (in threads, or polled
//! from one loop).
//!
//! ```
//! use xen_platform::{Events, GrantMapper, Grants, Pages};
//!
//! let hv = xen_sim::Hypervisor::new();
//! let dom0 = hv.create_domain("Domain-0");
//! let domu = hv.create_domain("guest");
//!
//! // The guest shares a page with dom0 ...
//! let page = domu.alloc(1).unwrap();
//! let frame = domu.frame(page.addr).unwrap();
//! let gref = domu.grant(dom0.id(), frame, false).unwrap();
//! // SAFETY: the run is one writable page the guest owns.
//! unsafe { page.addr.as_ptr().write(42) };
//!
//! // ... which dom0 maps at a different address and sees the same bytes.
//! let m = dom0.map(domu.id(), gref, true).unwrap();
//! assert_ne!(m.addr, page.addr);
//! // SAFETY: a live one-page mapping.
//! assert_eq!(unsafe { m.addr.as_ptr().read() }, 42);
//!
//! // An event channel: the guest offers a port, dom0 binds it and notifies.
//! let gport = domu.alloc_unbound(dom0.id()).unwrap();
//! let dport = dom0.bind_interdomain(domu.id(), gport).unwrap();
//! dom0.notify(dport).unwrap();
//! assert_eq!(domu.wait(&[gport], None), Ok(gport));
//!
//! dom0.unmap(m).unwrap();
//! domu.end(gref).unwrap();
//! domu.free(page).unwrap();
//! ```
//!
//! # What it enforces (as Xen does)
//! * **Memory** is one memfd ("machine memory"); a frame is a page offset in it. A domain's
//!   pages ([`Pages::alloc`]) and every grant mapping ([`GrantMapper::map`]) are `MAP_SHARED`
//!   mappings of that file, so granter and mapper see the same bytes at different addresses.
//!   Read-only grant mappings are `PROT_READ`. A frame is reused only when nobody owns, grants
//!   or maps it any more, and is zeroed first.
//! * **Grant table** per domain, refs from [`NR_RESERVED_REFS`] (8) up to
//!   [`Config::grant_entries`]; exhaustion is `NoSpace`. A domain can grant only frames it
//!   owns (another domain's frame: `PermissionDenied`; a frame nobody owns: `Invalid`).
//!   Mapping or copying a ref that is not in use is `NotFound`; a ref granted to another domain
//!   is `PermissionDenied`; writing through a read-only grant (writable map, copy destination)
//!   is `PermissionDenied`; a granter that does not exist (or was destroyed) is `NoSuchDomain`.
//!   `end` of a ref still mapped is `Busy` (the grant stays); of a ref not in use, `NotFound`.
//!   [`Pages::free`] of a run with a granted page is `Busy`.
//! * **Event channels** per domain, ports `1..`[`Config::event_ports`] (0 is never
//!   allocated; port 0 or beyond the limit is `Invalid`, a port not allocated `NotFound`).
//!   `bind_interdomain` needs a port that is unbound and reserved for the caller (reserved for
//!   another domain: `PermissionDenied`; already bound: `Invalid`). As on Xen, the new local
//!   port starts **pending** (Xen sets it so that events sent before the bind are not lost).
//!   `notify` on a port allocated but not yet bound is dropped silently and succeeds, as
//!   Xen's `evtchn_send` does for `ECS_UNBOUND`; on a port whose peer closed or died it is
//!   `PeerGone` (a deliberate deviation: Xen drops that send too, the simulator reports it so
//!   tests see the fault). Masked ports collect pending bits without waking; unmasking a pending port
//!   wakes. `wait` returns the first pending unmasked port, `PeerGone` when every port's peer
//!   is gone, `Timeout` after the timeout, and `NoSuchDomain` if the caller is destroyed.
//! * **Destroy** ([`Hypervisor::destroy_domain`]) closes the domain's ports (peers are woken
//!   and see `PeerGone`), releases its mappings of others' grants (so they can `end` them),
//!   revokes its grants (peers' existing mappings stay readable and keep the frames alive; new
//!   maps fail `NoSuchDomain`) and frees its memory. Its address ranges are replaced by
//!   anonymous memory rather than unmapped, so a thread still running "in" the dead domain
//!   never faults. Every trait call on a dead handle returns `Err(NoSuchDomain)` (or `false`,
//!   or nothing for `Console`, `Scheduler::yield_now`/`block`); the clock keeps running.
//! * **Scheduler**: `yield_now` is `std::thread::yield_now`; `block` sleeps until an unmasked
//!   event is pending or the timeout passes; `shutdown(reason)` records the reason (see
//!   [`Domain::shutdown_reason`], [`Domain::wait_shutdown`]) and returns `Ok(false)` (for
//!   `Suspend`: "resumed, not cancelled"; nothing is torn down).
//!
//! `DOMID_SELF` is accepted wherever a domid is.
//!
//! The console of each domain is captured ([`Domain::console_output`]) and, when the
//! environment variable `XENOLITH_SIM_CONSOLE=1` is set, echoed to stderr with a
//! `[domid name]` prefix per line.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use xen_platform::abi::DOMID_FIRST_RESERVED;
use xen_platform::{
    Clock, Console, Events, EvtchnPort, GrantCopy, GrantMapper, GrantRef, Grants, Mapping,
    MultiMapping, PageRun, Pages, Scheduler, XenPfn,
};
pub use xen_platform::{DomId, Error, Result, ShutdownReason};

mod mem;
mod state;

pub use state::NR_RESERVED_REFS;
use state::{DomState, Machine, PortPoll, State};

/// Limits of a simulated hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Grant entries per domain (refs `0..grant_entries`; `0..8` are reserved). Default 32768:
    /// Xen's default of 64 grant-table frames of v1 entries.
    pub grant_entries: u32,
    /// Event-channel ports per domain (ports `1..event_ports`). Default 4096 (2-level ABI,
    /// 64-bit guest).
    pub event_ports: u32,
    /// Grant mappings a domain may hold at once. Default 262144.
    pub maptrack_entries: u32,
    /// Machine frames in total. Default 64 Mi frames (256 GiB, a sparse file: only pages in
    /// use cost memory).
    pub max_frames: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grant_entries: 32768,
            event_ports: 4096,
            maptrack_entries: 1 << 18,
            max_frames: 64 << 20,
        }
    }
}

/// Counters of what a live domain holds (for leak checks in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainStats {
    /// Pages allocated with [`Pages::alloc`] and not freed.
    pub pages: usize,
    /// Grant entries in use (including reserved ones set with [`Domain::grant_reserved`]).
    pub grants: usize,
    /// Grant mappings held (one per page of a multi-page mapping).
    pub mappings: usize,
    /// Event-channel ports allocated.
    pub ports: usize,
}

/// The part of a domain that outlives its destruction (name, console, shutdown reason).
pub(crate) struct DomShared {
    id: DomId,
    name: String,
    alive: AtomicBool,
    /// Signalled (with the hypervisor lock) when an event may be pending or the domain dies.
    cv: Condvar,
    console: Mutex<ConsoleBuf>,
    shutdown: Mutex<Option<ShutdownReason>>,
    shutdown_cv: Condvar,
    params: Mutex<BTreeMap<u32, u64>>,
}

#[derive(Default)]
struct ConsoleBuf {
    bytes: Vec<u8>,
    at_line_start: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A simulated hypervisor: machine memory and the domains running on it.
pub struct Hypervisor {
    this: Weak<Hypervisor>,
    state: Mutex<State>,
    start: Instant,
    echo_console: bool,
    /// Bumped on every domain creation, destruction and shutdown.
    epoch: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Hypervisor")
            .field("domains", &st.domains.keys().collect::<Vec<_>>())
            .field("frames_in_use", &st.mem.in_use())
            .finish()
    }
}

impl Hypervisor {
    /// A hypervisor with the default [`Config`].
    ///
    /// # Panics
    /// If the machine-memory memfd cannot be created (not Linux, or out of descriptors).
    pub fn new() -> Arc<Hypervisor> {
        Self::with_config(Config::default())
    }

    /// A hypervisor with the given limits.
    ///
    /// # Panics
    /// If the machine-memory memfd cannot be created (not Linux, or out of descriptors).
    pub fn with_config(config: Config) -> Arc<Hypervisor> {
        let mem = match Machine::new(config.max_frames) {
            Ok(m) => m,
            Err(e) => panic!("xen-sim: cannot create machine memory (memfd_create): {e}"),
        };
        let echo_console = std::env::var_os("XENOLITH_SIM_CONSOLE").is_some_and(|v| v == "1");
        Arc::new_cyclic(|this| Hypervisor {
            this: this.clone(),
            state: Mutex::new(State {
                domains: BTreeMap::new(),
                mem,
                next_domid: 0,
                chosen: std::collections::BTreeSet::new(),
                graveyard: Vec::new(),
                config,
            }),
            start: Instant::now(),
            echo_console,
            epoch: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn arc(&self) -> Arc<Hypervisor> {
        // `self` is only reachable through an `Arc` (constructors return one), so while
        // `&self` exists the upgrade succeeds.
        match self.this.upgrade() {
            Some(a) => a,
            None => unreachable!("Hypervisor used outside its Arc"),
        }
    }

    /// The limits this hypervisor enforces.
    pub fn config(&self) -> Config {
        self.lock().config
    }

    /// Create a domain. Domids are handed out from 0 upward and never reused: the first
    /// domain created is dom0 (privileged). See [`Hypervisor::create_domain_with_id`] to
    /// choose one.
    ///
    /// # Panics
    /// When all 32752 domids have been used; see [`Hypervisor::try_create_domain`].
    pub fn create_domain(&self, name: &str) -> Domain {
        match self.try_create_domain(name) {
            Ok(d) => d,
            Err(e) => panic!("xen-sim: cannot create domain {name:?}: {e}"),
        }
    }

    /// Create a domain; `NoSpace` once every domid below `DOMID_FIRST_RESERVED` was used.
    /// Domids chosen with [`Hypervisor::create_domain_with_id`] are skipped.
    pub fn try_create_domain(&self, name: &str) -> Result<Domain> {
        let mut st = self.lock();
        let id = loop {
            let id = DomId::try_from(st.next_domid).map_err(|_| Error::NoSpace)?;
            if id >= DOMID_FIRST_RESERVED {
                return Err(Error::NoSpace);
            }
            st.next_domid += 1;
            if !st.chosen.contains(&id) {
                break id;
            }
        };
        Ok(self.insert_domain(&mut st, id, name))
    }

    /// Create a domain with a domid the toolstack chose (as `xl create` with a `domid=`
    /// setting, or a test that needs `/local/domain/5`). `Busy` if a live domain has it,
    /// `Invalid` for a reserved domid (`DOMID_FIRST_RESERVED` and up). A domid may be chosen
    /// again once its domain was destroyed (Xen re-uses domids too); the sequential
    /// allocation of [`Hypervisor::create_domain`] never hands out a chosen one.
    pub fn create_domain_with_id(&self, id: DomId, name: &str) -> Result<Domain> {
        if id >= DOMID_FIRST_RESERVED {
            return Err(Error::Invalid);
        }
        let mut st = self.lock();
        if st.domains.contains_key(&id) {
            return Err(Error::Busy);
        }
        // A domid the sequential allocator already handed out (and that died) is fine too.
        if u32::from(id) >= st.next_domid {
            st.chosen.insert(id);
        }
        Ok(self.insert_domain(&mut st, id, name))
    }

    fn insert_domain(&self, st: &mut State, id: DomId, name: &str) -> Domain {
        let shared = Arc::new(DomShared {
            id,
            name: name.to_owned(),
            alive: AtomicBool::new(true),
            cv: Condvar::new(),
            console: Mutex::new(ConsoleBuf {
                bytes: Vec::new(),
                at_line_start: true,
            }),
            shutdown: Mutex::new(None),
            shutdown_cv: Condvar::new(),
            params: Mutex::new(BTreeMap::new()),
        });
        st.domains.insert(id, DomState::new(shared.clone()));
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Domain {
            hv: self.arc(),
            shared,
        }
    }

    /// A handle to a live domain.
    pub fn domain(&self, id: DomId) -> Option<Domain> {
        let st = self.lock();
        st.domains.get(&id).map(|d| Domain {
            hv: self.arc(),
            shared: d.shared.clone(),
        })
    }

    /// The first live domain with this name.
    pub fn domain_by_name(&self, name: &str) -> Option<Domain> {
        let st = self.lock();
        st.domains
            .values()
            .find(|d| d.shared.name == name)
            .map(|d| Domain {
                hv: self.arc(),
                shared: d.shared.clone(),
            })
    }

    /// Handles to every live domain, by domid.
    pub fn domains(&self) -> Vec<Domain> {
        let st = self.lock();
        st.domains
            .values()
            .map(|d| Domain {
                hv: self.arc(),
                shared: d.shared.clone(),
            })
            .collect()
    }

    /// Destroy a domain (see the crate docs for what that revokes). `NoSuchDomain` if it does
    /// not exist or is already destroyed.
    pub fn destroy_domain(&self, id: DomId) -> Result<()> {
        let mut st = self.lock();
        let shared = st.destroy(id)?;
        shared.alive.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Wake waiters of this domain (they see NoSuchDomain) and of shutdown.
        shared.cv.notify_all();
        let _g = lock(&shared.shutdown);
        shared.shutdown_cv.notify_all();
        Ok(())
    }

    /// A counter that changes whenever a domain is created, destroyed or shuts down — what
    /// `VIRQ_DOM_EXC` tells dom0 on Xen ("look at the domain list again"), as a value to
    /// compare: a toolstack or xenstored re-reads [`Hypervisor::domains`] only when it moved.
    pub fn domain_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Machine frames in use (owned by a domain, or kept alive by a mapping).
    pub fn frames_in_use(&self) -> usize {
        self.lock().mem.in_use()
    }

    /// Time since the hypervisor started (what every domain's [`Clock`] returns).
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        // No Domain handle exists any more (each holds an Arc to us): nothing can free or
        // unmap these ranges through the API, so release them.
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        st.unmap_all();
    }
}

/// A domain of a [`Hypervisor`]: a cheap, `Send + Sync` handle that implements every platform
/// trait. Clones refer to the same domain.
#[derive(Clone)]
pub struct Domain {
    hv: Arc<Hypervisor>,
    shared: Arc<DomShared>,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("id", &self.shared.id)
            .field("name", &self.shared.name)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl PartialEq for Domain {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Domain {}

impl Domain {
    /// The domid.
    pub fn id(&self) -> DomId {
        self.shared.id
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether this is dom0 (the control domain).
    pub fn is_privileged(&self) -> bool {
        self.shared.id == 0
    }

    /// The hypervisor this domain runs on.
    pub fn hypervisor(&self) -> &Arc<Hypervisor> {
        &self.hv
    }

    /// Let this domain hold at most `pages` foreign mappings at once (`None`: no window), as a
    /// real guest that maps grants into a fixed window does (xen-rt: 1024 pages; it was 32):
    /// a map beyond it fails with `NoSpace`, and [`GrantMapper::map_slots`] reports the window.
    pub fn set_map_window(&self, pages: Option<usize>) -> Result<()> {
        self.hv.lock().set_map_window(self.id_(), pages)
    }

    /// Whether the domain exists (not destroyed). A shut-down domain is still alive until the
    /// toolstack destroys it.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Play what `xl save` + `xl restore` leave this domain of its grants and event channels:
    /// every port but `keep` (its XenStore port, say) closed — peers see them go — and every
    /// grant revoked: no peer can map or copy it any more, and ending it succeeds at once (as
    /// on an empty grant table). Memory, pages and the domain id stay.
    pub fn revoke_for_restore(&self, keep: &[EvtchnPort]) -> Result<()> {
        self.hv.lock().revoke_for_restore(self.id_(), keep)
    }

    /// Destroy this domain (same as [`Hypervisor::destroy_domain`]).
    pub fn destroy(&self) -> Result<()> {
        self.hv.destroy_domain(self.shared.id)
    }

    /// The last reason given to [`Scheduler::shutdown`], if any.
    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        *lock(&self.shared.shutdown)
    }

    /// Wait until the domain calls [`Scheduler::shutdown`] (returns the reason) or is
    /// destroyed or `timeout` passes (returns the reason so far, possibly `None`).
    pub fn wait_shutdown(&self, timeout: Option<Duration>) -> Option<ShutdownReason> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut g = lock(&self.shared.shutdown);
        loop {
            if g.is_some() || !self.is_alive() {
                return *g;
            }
            g = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return *g;
                    }
                    self.shared
                        .shutdown_cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .shared
                    .shutdown_cv
                    .wait(g)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Everything written to the console so far (lossy UTF-8). Kept after destruction.
    pub fn console_output(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared.console).bytes).into_owned()
    }

    /// What the domain holds; `None` once destroyed.
    pub fn stats(&self) -> Option<DomainStats> {
        self.hv.lock().live(self.shared.id).ok().map(|d| d.stats())
    }

    /// Fill a reserved grant entry (`gref < 8`), as the domain builder does for
    /// `GNTTAB_RESERVED_CONSOLE` (0) and `GNTTAB_RESERVED_XENSTORE` (1). `Busy` if the entry
    /// is in use; ownership and domid rules as for [`Grants::grant`]. End it with
    /// [`Grants::end`].
    pub fn grant_reserved(
        &self,
        gref: GrantRef,
        domid: DomId,
        frame: XenPfn,
        readonly: bool,
    ) -> Result<()> {
        self.hv
            .lock()
            .grant_reserved(self.shared.id, gref, domid, frame, readonly)
    }

    /// Set an HVM parameter (`HVM_PARAM_*`, e.g. `STORE_PFN` 1, `STORE_EVTCHN` 2,
    /// `CONSOLE_PFN` 17, `CONSOLE_EVTCHN` 18), as the toolstack does before the guest runs.
    pub fn set_hvm_param(&self, index: u32, value: u64) {
        lock(&self.shared.params).insert(index, value);
    }

    /// Read an HVM parameter (`HVMOP_get_param`); `None` if never set.
    pub fn hvm_param(&self, index: u32) -> Option<u64> {
        lock(&self.shared.params).get(&index).copied()
    }

    fn id_(&self) -> DomId {
        self.shared.id
    }

    fn echo(&self, bytes: &[u8], buf: &mut ConsoleBuf) {
        let prefix = format!("[{} {}] ", self.shared.id, self.shared.name);
        let out = prefix_lines(&prefix, bytes, &mut buf.at_line_start);
        let _ = std::io::stderr().lock().write_all(&out);
    }
}

impl Events for Domain {
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort> {
        self.hv.lock().alloc_unbound(self.id_(), remote)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort> {
        self.hv
            .lock()
            .bind_interdomain(self.id_(), remote, remote_port)
    }

    fn notify(&self, port: EvtchnPort) -> Result<()> {
        self.hv.lock().notify(self.id_(), port)
    }

    fn close(&self, port: EvtchnPort) -> Result<()> {
        self.hv.lock().close(self.id_(), port)
    }

    fn mask(&self, port: EvtchnPort) -> Result<()> {
        self.hv.lock().set_mask(self.id_(), port, true)
    }

    fn unmask(&self, port: EvtchnPort) -> Result<()> {
        self.hv.lock().set_mask(self.id_(), port, false)
    }

    fn is_pending(&self, port: EvtchnPort) -> bool {
        self.hv.lock().is_pending(self.id_(), port)
    }

    fn clear(&self, port: EvtchnPort) -> bool {
        self.hv.lock().clear(self.id_(), port)
    }

    /// As the trait says; in addition: an empty `ports` just sleeps for `timeout` (`Invalid`
    /// with no timeout, which would never return), a port that is not allocated is an error
    /// (`Invalid`/`NotFound`), and destroying the caller ends the wait with `NoSuchDomain`.
    fn wait(&self, ports: &[EvtchnPort], timeout: Option<Duration>) -> Result<EvtchnPort> {
        if ports.is_empty() && timeout.is_none() {
            return Err(Error::Invalid);
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.hv.lock();
        loop {
            if let PortPoll::Ready(p) = st.poll_ports(self.id_(), ports)? {
                return Ok(p);
            }
            st = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout);
                    }
                    self.shared
                        .cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .shared
                    .cv
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

impl Grants for Domain {
    fn grant(&self, domid: DomId, frame: XenPfn, readonly: bool) -> Result<GrantRef> {
        self.hv.lock().grant(self.id_(), domid, frame, readonly)
    }

    fn end(&self, gref: GrantRef) -> Result<()> {
        self.hv.lock().end(self.id_(), gref)
    }

    fn grant_refs(&self) -> Option<(usize, usize)> {
        self.hv.lock().grant_refs(self.id_())
    }

    /// Under one lock. On a dead domain every ref fails with `NoSuchDomain`.
    fn end_batch(&self, refs: &[GrantRef], failed: &mut dyn FnMut(GrantRef, Error)) -> usize {
        let mut errors = Vec::new();
        {
            let mut st = self.hv.lock();
            for &r in refs {
                if let Err(e) = st.end(self.id_(), r) {
                    errors.push((r, e));
                }
            }
        }
        // Report outside the lock: the callback may call back into the platform.
        for &(r, e) in &errors {
            failed(r, e);
        }
        errors.len()
    }
}

impl GrantMapper for Domain {
    fn map(&self, domid: DomId, gref: GrantRef, readonly: bool) -> Result<Mapping> {
        self.hv.lock().map(self.id_(), domid, gref, readonly)
    }

    fn unmap(&self, mapping: Mapping) -> Result<()> {
        self.hv.lock().unmap(self.id_(), &mapping)
    }

    fn map_multi(&self, domid: DomId, refs: &[GrantRef], readonly: bool) -> Result<MultiMapping> {
        self.hv.lock().map_multi(self.id_(), domid, refs, readonly)
    }

    fn unmap_multi(&self, mapping: MultiMapping) -> Result<()> {
        self.hv.lock().unmap_multi(self.id_(), &mapping)
    }

    fn copy(&self, ops: &[GrantCopy], status: &mut [Result<()>]) -> Result<()> {
        self.hv.lock().copy(self.id_(), ops, status)
    }

    fn map_slots(&self) -> Option<(usize, usize)> {
        self.hv.lock().map_slots(self.id_())
    }
}

impl Pages for Domain {
    fn alloc(&self, pages: usize) -> Result<PageRun> {
        self.hv.lock().alloc(self.id_(), pages)
    }

    fn free(&self, run: PageRun) -> Result<()> {
        self.hv.lock().free(self.id_(), &run)
    }

    fn frame(&self, addr: NonNull<u8>) -> Result<XenPfn> {
        self.hv.lock().frame(self.id_(), addr.as_ptr() as usize)
    }
}

impl Console for Domain {
    fn write(&self, bytes: &[u8]) {
        if !self.is_alive() {
            return;
        }
        let mut buf = lock(&self.shared.console);
        buf.bytes.extend_from_slice(bytes);
        if self.hv.echo_console {
            self.echo(bytes, &mut buf);
        }
    }
}

impl Clock for Domain {
    fn now(&self) -> Duration {
        self.hv.now()
    }
}

impl Scheduler for Domain {
    fn yield_now(&self) {
        std::thread::yield_now();
    }

    /// Returns at once if an unmasked event is pending (as `SCHEDOP_block`) or the domain is
    /// dead; otherwise sleeps until an event arrives, the domain is destroyed, or `timeout`.
    /// Spurious early returns are possible (the trait allows them: "may have arrived").
    fn block(&self, timeout: Option<Duration>) {
        let st = self.hv.lock();
        if st.any_event(self.id_()).unwrap_or(true) {
            return;
        }
        match timeout {
            Some(t) => drop(self.shared.cv.wait_timeout(st, t)),
            None => drop(self.shared.cv.wait(st)),
        }
    }

    /// Records `reason` (see [`Domain::shutdown_reason`], [`Domain::wait_shutdown`]) and
    /// returns `Ok(false)`; the domain keeps running until the toolstack destroys it.
    fn shutdown(&self, reason: ShutdownReason) -> Result<bool> {
        let st = self.hv.lock();
        st.live(self.id_())?;
        let mut g = lock(&self.shared.shutdown);
        *g = Some(reason);
        self.hv.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.shutdown_cv.notify_all();
        Ok(false)
    }
}

/// `bytes` with `prefix` at the start of every line; `at_line_start` carries the state from one
/// write to the next.
fn prefix_lines(prefix: &str, bytes: &[u8], at_line_start: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + prefix.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if *at_line_start {
            out.extend_from_slice(prefix.as_bytes());
        }
        out.extend_from_slice(line);
        *at_line_start = line.ends_with(b"\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    fn assert_platform<T: xen_platform::Platform>() {}

    #[test]
    fn domain_is_send_sync_platform() {
        assert_send_sync::<Domain>();
        assert_send_sync::<Arc<Hypervisor>>();
        assert_platform::<Domain>();
    }

    #[test]
    fn echo_prefixes_every_line_across_writes() {
        let mut start = true;
        let mut out = prefix_lines("[1 a] ", b"one\ntw", &mut start);
        out.extend(prefix_lines("[1 a] ", b"o\n", &mut start));
        out.extend(prefix_lines("[1 a] ", b"", &mut start));
        out.extend(prefix_lines("[1 a] ", b"three", &mut start));
        assert_eq!(out, b"[1 a] one\n[1 a] two\n[1 a] three");
        assert!(!start);
    }
}
