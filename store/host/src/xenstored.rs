//! Our xenstored: one [`xen_store::server::Store`] served over Unix sockets (dom0 tools) and
//! over the ring pages and event channels of simulated domains (`xen_sim`).
//!
//! ```no_run
//! use xen_store::client::Store as _;
//! use xen_store::server::Quotas;
//! use xen_store_host::xenstored::Xenstored;
//!
//! let hv = xen_sim::Hypervisor::new();
//! let _dom0 = hv.create_domain("Domain-0"); // the daemon runs in dom0
//! let xsd = Xenstored::start_sim(&hv, Quotas::default()).unwrap();
//! xsd.serve_socket("/tmp/xs.sock").unwrap();
//! let guest = hv.create_domain_with_id(5, "guest").unwrap();
//! let mut c = xsd.serve_domain(guest.id()).unwrap().client().unwrap();
//! c.write("data", b"hello").unwrap(); // /local/domain/5/data, if dom0 made room for it
//! ```
//!
//! # Threads
//! The [`Store`] and the state of every connection live behind one mutex; whoever has work
//! takes it for the time of one request (microseconds), never while waiting for I/O.
//! * **Per socket connection**, a *reader* thread reads and frames the client's requests,
//!   handles them, and writes the replies itself — a request costs one wake-up, as in the C
//!   daemon's single poll loop — and a *writer* thread writes what other connections caused
//!   for this one (watch events), woken when there is some. Both write under the
//!   connection's output lock, which they hold from taking the Store's output to the end of
//!   the write, so the stream stays in order; a client that does not read its replies blocks
//!   only its own threads (its reader then stops reading its requests), while the Store's
//!   bounded queue ([`Quotas::outbox`]) drops events for it and finally cuts it off.
//! * **Per socket**, a listener thread accepting connections.
//! * **With a hypervisor, the ring service thread** waits — never spins — with
//!   [`Events::wait`] on dom0's end of every served ring's event channel plus a *doorbell*
//!   (a loopback event channel of dom0, rung when the set of rings changes or on
//!   [`Xenstored::kick`]), at most [`TICK`]. When it wakes it clears those ports, looks at the
//!   hypervisor's domains, and serves the rings until nothing moves. Replies and events for
//!   rings caused by socket requests are written into the rings at once by the thread that
//!   handled the request.
//!
//! # Rings (xenstore-ring.txt)
//! The daemon side of each page is an [`XsServerRing`]. Requests are read while the Store
//! [`wants_input`](Store::wants_input); replies are buffered in memory and written as far as
//! they fit — the daemon never waits for room in `rsp`, so it never stops reading `req` for
//! that reason. The guest is notified after each round in which an index moved.
//!
//! We advertise `XENSTORE_SERVER_FEATURE_ERROR` and `_RECONNECTION` (a deliberate difference:
//! xenstored 4.17 leaves `server_features` at 0 — checked on its page — so its guests are
//! never told why their ring stopped). Corrupt indexes
//! ([`xen_platform::Error::RingOverflow`]) set `XENSTORE_ERROR_RINGIDX`, a header claiming
//! more than 4096 bytes sets `XENSTORE_ERROR_PROTO`, a connection cut off for not reading its
//! replies ([`Store::is_broken`]) sets `XENSTORE_ERROR_COMM`; then we notify and stop serving
//! that ring (its watches and transactions are dropped; the domain stays introduced until it
//! is released or dies, as after xenstored's `ignore_connection()`). `connection ==
//! XENSTORE_RECONNECT` drops partial input, queued output, watches and transactions, resets
//! the indexes and sets `XENSTORE_CONNECTED`.
//!
//! # Domains (what the hypervisor tells xenstored)
//! A domain exists for the Store while it exists in the simulator ([`Store::create_domain`]
//! when first seen, [`Store::destroy_domain`] once gone — which removes its nodes and fires
//! `@releaseDomain`, as `VIRQ_DOM_EXC` makes the C daemon do); a domain that calls
//! `shutdown` fires `@releaseDomain` once ([`Store::shutdown_domain`]). The simulator has no
//! VIRQ: the daemon compares [`Hypervisor::domain_epoch`] before every request and whenever
//! the ring service thread wakes (at least every [`TICK`]); [`Xenstored::kick`] wakes it.
//!
//! `XS_INTRODUCE(domid, mfn, port)` works as in xenstored 4.17: the daemon maps the guest's
//! grant `GNTTAB_RESERVED_XENSTORE` (the `mfn` is not used) and binds `port` with
//! `bind_interdomain`; if either fails the reply is `EINVAL` and nothing is introduced. A
//! second `XS_INTRODUCE` of an introduced domain re-binds the event channel. The toolstack
//! side — page, reserved grant, unbound port, `HVM_PARAM_STORE_PFN`/`_EVTCHN` — is
//! [`SimGuest::build`]; [`Xenstored::serve_domain`] does both.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use xen_platform::abi::grant_table::GNTTAB_RESERVED_XENSTORE;
use xen_platform::abi::hvm::{HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
use xen_platform::abi::xs::{
    XENSTORE_ERROR_COMM, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_RECONNECT,
    XENSTORE_SERVER_FEATURE_ERROR, XENSTORE_SERVER_FEATURE_RECONNECTION,
};
use xen_platform::xs_ring::{XsGuestRing, XsServerRing};
use xen_platform::{Error as PlatformError, Events, GrantMapper, Mapping, Pages, XenPfn};
use xen_sim::{Domain, Hypervisor};
use xen_store::client::{Client, ClientConfig};
use xen_store::server::{ConnId, Notice, Quotas, Store};
use xen_store::wire::{Message, MsgType};
use xen_store::{DomId, EvtchnPort, Framer, Request, Response, XsError};

use crate::OwnedRing;

mod daemon;
mod guest;
mod rings;
mod socket;

use daemon::*;
pub use guest::SimGuest;
use rings::*;
use socket::*;

/// The longest the ring service thread sleeps: how late it may notice a domain that died
/// without a [`Xenstored::kick`] or a request.
pub const TICK: Duration = Duration::from_millis(100);

/// The features we advertise on every ring.
const FEATURES: u32 = XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR;

/// Reply bytes buffered for a ring above which no more output is taken from the Store.
const RING_OUT_HIGH: usize = 2048;

/// Reads of up to 1024 request bytes from one ring per round of the service thread.
const RING_ROUND_READS: usize = 4;

static DAEMON_SEQ: AtomicUsize = AtomicUsize::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn other(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

// ---------------------------------------------------------------------------------------------
// The public handle.

/// What every thread of a daemon shares.
struct Shared {
    core: Mutex<Core>,
    /// Set when the daemon stops.
    stop: AtomicBool,
    /// The ring service thread's doorbell: dom0 and the port to notify.
    bell: Option<(Domain, EvtchnPort)>,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    fn ring_bell(&self) {
        if let Some((dom0, port)) = &self.bell {
            // Fails only once dom0 is gone, and then no ring is served any more.
            let _ = dom0.notify(*port);
        }
    }
}

/// Our xenstored. See the [module docs](self). Dropping it stops the threads it started (the
/// threads of open socket connections end as their sockets are shut down) and removes the
/// sockets it created.
pub struct Xenstored {
    shared: Arc<Shared>,
    /// The ring service thread's name (`xenstored-N`, at most 15 bytes: a whole Linux `comm`).
    name: String,
    service: Option<JoinHandle<()>>,
    listeners: Mutex<Vec<Listener>>,
    hv: Option<Arc<Hypervisor>>,
}

impl std::fmt::Debug for Xenstored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let socks: Vec<PathBuf> = lock(&self.listeners)
            .iter()
            .map(|l| l.path.clone())
            .collect();
        f.debug_struct("Xenstored")
            .field("sockets", &socks)
            .field("hypervisor", &self.hv.is_some())
            .finish()
    }
}

struct Listener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Xenstored {
    /// A daemon with no hypervisor: it serves Unix sockets only (every client is dom0), and
    /// knows no domain but dom0 (so `XS_INTRODUCE` is `EINVAL`, as for a domain that does not
    /// exist).
    pub fn start(quotas: Quotas) -> Xenstored {
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(quotas, None)),
            stop: AtomicBool::new(false),
            bell: None,
        });
        Xenstored {
            shared,
            name: next_name(),
            service: None,
            listeners: Mutex::new(Vec::new()),
            hv: None,
        }
    }

    /// A daemon running in dom0 of `hv` (which must exist), serving the simulated domains
    /// that are introduced to it, and Unix sockets once [`serve_socket`](Self::serve_socket)
    /// is called.
    pub fn start_sim(hv: &Arc<Hypervisor>, quotas: Quotas) -> std::io::Result<Xenstored> {
        let dom0 = hv
            .domain(0)
            .ok_or_else(|| other("the hypervisor has no dom0 for xenstored to run in"))?;
        // The doorbell: a loopback channel in dom0. The service thread waits on `wait_port`;
        // notifying `ring_port` (its peer) wakes it.
        let wait_port = dom0
            .alloc_unbound(0)
            .map_err(|e| other(format!("doorbell: {e}")))?;
        let ring_port = dom0
            .bind_interdomain(0, wait_port)
            .map_err(|e| other(format!("doorbell: {e}")))?;
        let sim = SimSide {
            hv: hv.clone(),
            dom0: dom0.clone(),
            bell: (wait_port, ring_port),
            known: BTreeMap::new(),
            epoch: None,
        };
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(quotas, Some(sim))),
            stop: AtomicBool::new(false),
            bell: Some((dom0.clone(), ring_port)),
        });
        let name = next_name();
        let s = shared.clone();
        let service = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || ring_service(s, dom0, wait_port))?;
        Ok(Xenstored {
            shared,
            name,
            service: Some(service),
            listeners: Mutex::new(Vec::new()),
            hv: Some(hv.clone()),
        })
    }

    /// The ring service thread's name, `xenstored-N` (N counts daemons started in this
    /// process), as `/proc/self/task/*/comm` shows it. Only a daemon with a hypervisor has
    /// that thread.
    pub fn service_thread_name(&self) -> &str {
        &self.name
    }

    /// The hypervisor whose domains are served, if any.
    pub fn hypervisor(&self) -> Option<&Arc<Hypervisor>> {
        self.hv.as_ref()
    }

    /// Listen on a Unix socket at `path` (a stale socket file there is replaced). Every client
    /// is a privileged dom0 connection. A client whose message header claims more than 4096
    /// bytes is dropped, as xenstored drops it; the others are not affected.
    pub fn serve_socket(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let path = path.as_ref().to_path_buf();
        let listener = match UnixListener::bind(&path) {
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                std::fs::remove_file(&path)?;
                UnixListener::bind(&path)?
            }
            r => r?,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, shared) = (stop.clone(), self.shared.clone());
        let thread = std::thread::Builder::new()
            .name("xenstored-accept".into())
            .spawn(move || accept_loop(listener, stop2, shared))?;
        lock(&self.listeners).push(Listener {
            path,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Run `f` on the Store (between two requests) and return its result. Domains introduced
    /// or released by `f` are attached or detached afterwards, and output it caused is sent.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut core = self.shared.core();
        let r = f(&mut core.store);
        core.process_notices();
        core.after_requests(None);
        r
    }

    /// Look at the hypervisor's domains soon (what `VIRQ_DOM_EXC` makes xenstored do):
    /// wakes the ring service thread and returns.
    pub fn kick(&self) {
        self.shared.ring_bell();
    }

    /// Look at the hypervisor's domains now: domains destroyed since are released (their
    /// nodes removed, `@releaseDomain` fired) and their rings unmapped before this returns.
    pub fn sync(&self) {
        let mut core = self.shared.core();
        core.sync_domains();
        core.after_requests(None);
    }

    /// `XS_INTRODUCE(domid, 0, port)` from a privileged connection: map the domain's
    /// `GNTTAB_RESERVED_XENSTORE` grant, bind `port`, and introduce it (firing
    /// `@introduceDomain` the first time). The error is the reply xenstored would give.
    pub fn introduce_domain(&self, domid: DomId, port: EvtchnPort) -> Result<(), XsError> {
        let mut core = self.shared.core();
        let r = core.internal_request(&Request::Introduce {
            domid,
            mfn: 0,
            port,
        });
        core.after_requests(None);
        r
    }

    /// Play the toolstack and the daemon for domain `domid` of the hypervisor: build its
    /// xenstore page and event channel ([`SimGuest::build`]) and introduce it. The returned
    /// [`SimGuest`] gives the guest its client.
    pub fn serve_domain(&self, domid: DomId) -> std::io::Result<SimGuest> {
        let hv = self
            .hv
            .as_ref()
            .ok_or_else(|| other("this xenstored has no hypervisor"))?;
        let guest = hv
            .domain(domid)
            .ok_or_else(|| other(format!("no domain {domid}")))?;
        let g = SimGuest::build(&guest).map_err(|e| other(format!("build dom{domid}: {e}")))?;
        self.introduce_domain(domid, g.port())
            .map_err(|e| other(format!("introduce dom{domid}: {e}")))?;
        Ok(g)
    }

    /// Destroy domain `domid` in the hypervisor and release it in the daemon (its nodes
    /// removed, `@releaseDomain` fired, its ring unmapped) before returning.
    pub fn destroy_domain(&self, domid: DomId) -> std::io::Result<()> {
        let hv = self
            .hv
            .as_ref()
            .ok_or_else(|| other("this xenstored has no hypervisor"))?;
        hv.destroy_domain(domid)
            .map_err(|e| other(format!("destroy dom{domid}: {e}")))?;
        self.sync();
        Ok(())
    }

    /// Which domains have a ring being served, and whether each is still served (`false`:
    /// stopped after an error).
    pub fn rings(&self) -> Vec<(DomId, bool)> {
        let core = self.shared.core();
        core.rings.iter().map(|(&k, r)| (k, !r.stopped)).collect()
    }

    /// Open socket connections.
    pub fn socket_connections(&self) -> usize {
        self.shared.core().sockets.len()
    }
}

fn next_name() -> String {
    format!(
        "xenstored-{}",
        DAEMON_SEQ.fetch_add(1, Ordering::Relaxed) % 100_000
    )
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        let listeners = std::mem::take(&mut *lock(&self.listeners));
        for mut l in listeners {
            l.stop.store(true, Ordering::SeqCst);
            // Wake the accept() (a connection dropped at once), then wait for the thread. If
            // the socket file was removed behind our back nothing can wake it: leave it.
            if UnixStream::connect(&l.path).is_ok() {
                if let Some(t) = l.thread.take() {
                    let _ = t.join();
                }
            }
            let _ = std::fs::remove_file(&l.path);
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.ring_bell();
        if let Some(t) = self.service.take() {
            let _ = t.join();
        }
        self.shared.core().shutdown();
    }
}
