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

// ---------------------------------------------------------------------------------------------
// Socket threads.

/// One socket connection, as its threads and the core see it.
struct Sock {
    id: ConnId,
    stream: UnixStream,
    /// Held from taking the Store's output to the end of writing it.
    out: Mutex<()>,
    /// The writer thread's wake-up: "there is output" (or "closed").
    flush: Mutex<bool>,
    flush_cv: Condvar,
    closed: AtomicBool,
}

impl Sock {
    /// Close it: both threads end (the reader sees end of stream, the writer its flag).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.wake_writer();
    }

    fn wake_writer(&self) {
        *lock(&self.flush) = true;
        self.flush_cv.notify_one();
    }
}

fn accept_loop(listener: UnixListener, stop: Arc<AtomicBool>, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // EMFILE and the like: do not spin on it.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let (Ok(rd), Ok(wr)) = (stream.try_clone(), stream.try_clone()) else {
            continue;
        };
        let sock = {
            let mut core = shared.core();
            let id = core.store.connect(0);
            let sock = Arc::new(Sock {
                id,
                stream,
                out: Mutex::new(()),
                flush: Mutex::new(false),
                flush_cv: Condvar::new(),
                closed: AtomicBool::new(false),
            });
            core.sockets.insert(id, sock.clone());
            sock
        };
        let (s1, k1) = (shared.clone(), sock.clone());
        let reader = std::thread::Builder::new()
            .name("xenstored-read".into())
            .spawn(move || socket_reader(s1, k1, rd));
        let (s2, k2) = (shared.clone(), sock.clone());
        let writer = std::thread::Builder::new()
            .name("xenstored-write".into())
            .spawn(move || socket_writer(s2, k2, wr));
        if reader.is_err() || writer.is_err() {
            shared.core().drop_socket(sock.id);
        }
    }
}

/// Write the Store's output for `sock`, then `extra` (a reply made outside the Store), in
/// order with everything else written on the connection. False if the connection failed.
fn flush(shared: &Shared, sock: &Sock, mut stream: &UnixStream, extra: Option<Vec<u8>>) -> bool {
    let _out = lock(&sock.out);
    let mut bytes = Vec::new();
    for m in shared.core().store.take_output(sock.id) {
        if let Ok(b) = m.encode() {
            bytes.extend_from_slice(&b);
        }
    }
    if let Some(e) = extra {
        bytes.extend_from_slice(&e);
    }
    if bytes.is_empty() || stream.write_all(&bytes).is_ok() {
        return true;
    }
    shared.core().drop_socket(sock.id);
    false
}

/// Read, frame and handle the client's requests, writing their replies (and whatever else is
/// queued for the connection) after each batch.
fn socket_reader(shared: Arc<Shared>, sock: Arc<Sock>, mut stream: UnixStream) {
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut msgs = Vec::new();
        let mut bad = false;
        let mut input = buf.get(..n).unwrap_or(&[]);
        while !input.is_empty() {
            match framer.push(input) {
                Ok((used, m)) => {
                    input = input.get(used..).unwrap_or(&[]);
                    msgs.extend(m);
                }
                Err(_) => {
                    // A header claiming more than 4096 bytes: xenstored drops the client.
                    bad = true;
                    break;
                }
            }
        }
        let mut rest = msgs.as_slice();
        while !rest.is_empty() {
            let mut extra = None;
            {
                let mut core = shared.core();
                while let Some((m, tail)) = rest.split_first() {
                    if !core.store.is_connected(sock.id) {
                        return;
                    }
                    if !core.store.wants_input(sock.id) {
                        break;
                    }
                    rest = tail;
                    if let Err(e) = core.handle(sock.id, m) {
                        // Made here, not by the Store: write it after what is queued.
                        extra = error_reply(m, e);
                        break;
                    }
                }
                core.after_requests(Some(sock.id));
            }
            if !flush(&shared, &sock, &stream, extra) {
                return;
            }
        }
        if bad {
            break;
        }
    }
    shared.core().drop_socket(sock.id);
}

/// An `XS_ERROR` reply to `req`, as wire bytes.
fn error_reply(req: &Message, e: XsError) -> Option<Vec<u8>> {
    Response::Error(e)
        .to_message(req.header.req_id, req.header.tx_id)
        .ok()
        .and_then(|m| m.encode().ok())
}

/// Write what other connections caused for this one (watch events), when woken.
fn socket_writer(shared: Arc<Shared>, sock: Arc<Sock>, stream: UnixStream) {
    loop {
        {
            let mut pending = lock(&sock.flush);
            while !*pending && !sock.closed.load(Ordering::SeqCst) {
                pending = sock
                    .flush_cv
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *pending = false;
        }
        if sock.closed.load(Ordering::SeqCst) || !flush(&shared, &sock, &stream, None) {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The ring service thread.

fn ring_service(shared: Arc<Shared>, dom0: Domain, bell: EvtchnPort) {
    while !shared.stop.load(Ordering::SeqCst) {
        let ports = {
            let core = shared.core();
            let mut p = vec![bell];
            p.extend(
                core.rings
                    .values()
                    .filter(|r| !r.stopped)
                    .filter_map(|r| r.port),
            );
            p
        };
        match dom0.wait(&ports, Some(TICK)) {
            Ok(_) | Err(PlatformError::Timeout) => {}
            // dom0 is gone: nothing can be served any more.
            Err(PlatformError::NoSuchDomain) => return,
            // A port closed meanwhile (its ring was detached): look again.
            Err(_) => {}
        }
        // Clear before serving: whatever is published after this sets the bit again.
        for p in ports {
            dom0.clear(p);
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut core = shared.core();
        core.sync_domains();
        loop {
            let read = core.ring_inputs();
            let written = core.after_requests(None);
            if !read && !written {
                break;
            }
            // Let socket threads in between rounds.
            drop(core);
            core = shared.core();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The core: the Store and every connection's state.

struct SimSide {
    hv: Arc<Hypervisor>,
    dom0: Domain,
    /// The doorbell: (the port the service thread waits on, the port to notify).
    bell: (EvtchnPort, EvtchnPort),
    /// Domains the Store was told about, with the handle of that incarnation.
    known: BTreeMap<DomId, Known>,
    /// [`Hypervisor::domain_epoch`] when `known` was last brought up to date.
    epoch: Option<u64>,
}

struct Known {
    handle: Domain,
    shutdown_fired: bool,
}

/// A grant mapping of a guest's ring page.
struct MappedPage(Mapping);

// SAFETY: a Mapping is the address (and grant handle) of a page mapped into this process's
// address space, valid from any thread; the page is shared memory that is only accessed
// through an XsServerRing (atomics and volatile copies), which is Send itself.
unsafe impl Send for MappedPage {}

/// A domain's ring page as the daemon serves it.
struct RingConn {
    conn: ConnId,
    /// Dropped before `mapping` is unmapped (it points into it).
    ring: Option<XsServerRing>,
    mapping: Option<MappedPage>,
    /// dom0's end of the xenstore event channel (none if a re-bind failed).
    port: Option<EvtchnPort>,
    framer: Framer,
    /// Reply bytes taken from the Store and not yet in `rsp`.
    out: VecDeque<u8>,
    /// An index moved since the last notification.
    moved: bool,
    /// Stopped after an error (the `error` field is set).
    stopped: bool,
}

/// A mapping and binding made for an `XS_INTRODUCE` before the Store handles it.
struct Attach {
    mapping: MappedPage,
    port: EvtchnPort,
}

struct Core {
    store: Store,
    sim: Option<SimSide>,
    sockets: BTreeMap<ConnId, Arc<Sock>>,
    rings: BTreeMap<DomId, RingConn>,
    prepared: BTreeMap<DomId, Attach>,
}

impl Core {
    fn new(quotas: Quotas, sim: Option<SimSide>) -> Core {
        Core {
            store: Store::new(quotas),
            sim,
            sockets: BTreeMap::new(),
            rings: BTreeMap::new(),
            prepared: BTreeMap::new(),
        }
    }

    fn ring_bell(&self) {
        if let Some(sim) = &self.sim {
            let _ = sim.dom0.notify(sim.bell.1);
        }
    }

    /// After requests were handled (by `handler`, which writes its own output): write what
    /// is queued for rings, wake the writers of other sockets with output, and drop what the
    /// Store cut off. True if bytes moved into a ring.
    fn after_requests(&mut self, handler: Option<ConnId>) -> bool {
        self.prune_rings();
        let doms: Vec<DomId> = self.rings.keys().copied().collect();
        let mut moved = false;
        for d in doms {
            moved |= self.ring_output(d);
        }
        let broken: Vec<DomId> = self
            .rings
            .iter()
            .filter(|(_, r)| !r.stopped && self.store.is_broken(r.conn))
            .map(|(&d, _)| d)
            .collect();
        for d in broken {
            self.fail_ring(d, XENSTORE_ERROR_COMM);
        }
        let mut cut = Vec::new();
        for (&id, s) in &self.sockets {
            if self.store.is_broken(id) || !self.store.is_connected(id) {
                cut.push(id);
            } else if Some(id) != handler && self.store.pending_output(id) > 0 {
                s.wake_writer();
            }
        }
        for id in cut {
            self.drop_socket(id);
        }
        moved
    }

    fn shutdown(&mut self) {
        let ids: Vec<ConnId> = self.sockets.keys().copied().collect();
        for id in ids {
            self.drop_socket(id);
        }
        let doms: Vec<DomId> = self.rings.keys().copied().collect();
        for d in doms {
            self.detach_ring(d);
        }
        if let Some(sim) = &self.sim {
            let _ = sim.dom0.close(sim.bell.1);
            let _ = sim.dom0.close(sim.bell.0);
        }
    }

    /// Close a socket connection (end of stream, a bad message, a failed write, or cut off):
    /// the Store forgets it and the client sees the connection closed.
    fn drop_socket(&mut self, id: ConnId) {
        if let Some(s) = self.sockets.remove(&id) {
            s.close();
        }
        self.store.disconnect(id);
    }

    // -----------------------------------------------------------------------------------------
    // Requests and notices.

    /// Handle one request of `conn`, then act on the Store's notices. `Err` is a reply made
    /// here for an `XS_INTRODUCE` whose ring could not be attached (the Store never saw it).
    fn handle(&mut self, conn: ConnId, msg: &Message) -> Result<(), XsError> {
        // A domain the requester created (or destroyed) just before must count.
        self.sync_domains();
        // (In a transaction the Store answers first, as xenstored checks the id first.)
        if matches!(msg.msg_type(), Ok(MsgType::Introduce))
            && msg.header.tx_id == 0
            && self.store.conn_domid(conn) == Some(0)
        {
            self.prepare_introduce(msg)?;
        }
        self.store.handle(conn, msg);
        self.process_notices();
        // An attachment the Store did not use (it refused the request).
        for (_, a) in std::mem::take(&mut self.prepared) {
            self.undo_attach(a);
        }
        Ok(())
    }

    /// For `XS_INTRODUCE` of an existing domain not yet introduced: map its reserved grant
    /// and bind its port first, as xenstored's `introduce_domain()` does (`EINVAL` if that
    /// fails, and the Store never sees the request). Malformed requests, unknown domains and
    /// re-introductions are the Store's business.
    fn prepare_introduce(&mut self, msg: &Message) -> Result<(), XsError> {
        let Ok(Request::Introduce { domid, port, .. }) =
            Request::decode(MsgType::Introduce, &msg.payload)
        else {
            return Ok(());
        };
        if domid == 0 || self.store.is_introduced(domid) {
            return Ok(());
        }
        let Some(sim) = &self.sim else {
            return Ok(());
        };
        if !sim.known.contains_key(&domid) {
            return Ok(());
        }
        let a = attach(&sim.dom0, domid, port).map_err(|_| XsError::Einval)?;
        if let Some(old) = self.prepared.insert(domid, a) {
            self.undo_attach(old);
        }
        Ok(())
    }

    fn undo_attach(&mut self, a: Attach) {
        if let Some(sim) = &self.sim {
            let _ = sim.dom0.unmap(a.mapping.0);
            let _ = sim.dom0.close(a.port);
        }
    }

    /// A request on a temporary privileged connection (the API's toolstack calls); the
    /// reply's error, if any.
    fn internal_request(&mut self, req: &Request) -> Result<(), XsError> {
        let msg = req.to_message(1, 0).map_err(|e| e.xs_error())?;
        let conn = self.store.connect(0);
        let r = self.handle(conn, &msg).and_then(|()| {
            let out = self.store.take_output(conn);
            let reply = out
                .iter()
                .find(|m| m.header.ty != MsgType::WatchEvent.as_u32())
                .map(Response::from_message);
            match reply {
                Some(Ok(Response::Error(e))) => Err(e),
                Some(Ok(_)) => Ok(()),
                _ => Err(XsError::Eio),
            }
        });
        self.store.disconnect(conn);
        r
    }

    fn process_notices(&mut self) {
        for n in self.store.take_notices() {
            match n {
                Notice::Introduced {
                    domid,
                    conn,
                    port,
                    new: true,
                    ..
                } => self.attach_ring(domid, conn, port),
                Notice::Introduced {
                    domid,
                    port,
                    new: false,
                    ..
                } => self.rebind(domid, port),
                Notice::Released { domid, .. } => self.detach_ring(domid),
            }
        }
    }

    /// A new connection for `domid`: its ring (mapped for the `XS_INTRODUCE`, or now).
    fn attach_ring(&mut self, domid: DomId, conn: ConnId, port: EvtchnPort) {
        // A ring of an earlier connection (stopped after an error) goes first.
        self.detach_ring(domid);
        let a = match self.prepared.remove(&domid) {
            Some(a) => Some(a),
            None => self
                .sim
                .as_ref()
                .and_then(|s| attach(&s.dom0, domid, port).ok()),
        };
        let Some(a) = a else {
            // Nothing to serve it on (no hypervisor, or no grant): the Store's connection
            // would only collect output.
            self.store.disconnect(conn);
            return;
        };
        // SAFETY: `a.mapping` is a one-page (4096 bytes, page-aligned) read/write grant
        // mapping made by dom0 in this process; it stays mapped until `detach_ring`, which
        // drops this XsServerRing before unmapping (RingConn keeps both), and if dom0 or the
        // guest is destroyed first the simulator replaces the range with anonymous memory
        // rather than unmapping it. The guest writes the page concurrently, which is what
        // XsServerRing is for; no Rust reference to the page exists, and this is the only
        // XsServerRing on this mapping.
        let ring = match unsafe { XsServerRing::new(a.mapping.0.addr) } {
            Ok(r) => r,
            Err(_) => {
                self.undo_attach(a);
                self.store.disconnect(conn);
                return;
            }
        };
        let mut ring = ring;
        // As xenstored: the indexes are left as the guest's builder made them (zero, for a
        // fresh page) — a guest may already have queued a request.
        ring.set_error(0);
        ring.add_server_features(FEATURES);
        ring.set_connected();
        self.rings.insert(
            domid,
            RingConn {
                conn,
                ring: Some(ring),
                mapping: Some(a.mapping),
                port: Some(a.port),
                framer: Framer::new(),
                out: VecDeque::new(),
                moved: true,
                stopped: false,
            },
        );
        // The service thread must wait on the new port.
        self.ring_bell();
    }

    /// A repeated `XS_INTRODUCE`: re-bind the event channel to `port`, as xenstored does
    /// (unbind the old one first; if the new bind fails the ring has no channel, and is
    /// still looked at on every wake-up).
    fn rebind(&mut self, domid: DomId, port: EvtchnPort) {
        let (Some(sim), Some(r)) = (&self.sim, self.rings.get_mut(&domid)) else {
            return;
        };
        if let Some(old) = r.port.take() {
            let _ = sim.dom0.close(old);
        }
        r.port = sim.dom0.bind_interdomain(domid, port).ok();
        r.moved = true;
        self.ring_bell();
    }

    /// Stop serving `domid`'s ring: unmap it and close the channel.
    fn detach_ring(&mut self, domid: DomId) {
        let Some(mut r) = self.rings.remove(&domid) else {
            return;
        };
        // The ring points into the mapping: drop it first.
        r.ring = None;
        if let Some(sim) = &self.sim {
            if let Some(m) = r.mapping.take() {
                let _ = sim.dom0.unmap(m.0);
            }
            if let Some(p) = r.port.take() {
                let _ = sim.dom0.close(p);
            }
        }
        self.store.disconnect(r.conn);
    }

    /// What the hypervisor says about domains (`xc_domain_getinfo()` after `VIRQ_DOM_EXC`):
    /// new ones exist for the Store, gone ones are destroyed (a domid re-used by a new domain
    /// counts as both), a shutdown fires `@releaseDomain` once.
    fn sync_domains(&mut self) {
        let Some(sim) = self.sim.as_mut() else {
            return;
        };
        // Read before the list: a change after it is seen next time.
        let epoch = sim.hv.domain_epoch();
        if sim.epoch == Some(epoch) {
            return;
        }
        sim.epoch = Some(epoch);
        let live = sim.hv.domains();
        let mut gone: Vec<DomId> = sim
            .known
            .keys()
            .filter(|id| !live.iter().any(|d| d.id() == **id))
            .copied()
            .collect();
        let mut fresh = Vec::new();
        let mut shut = Vec::new();
        for d in live {
            let id = d.id();
            if id == 0 {
                continue;
            }
            match sim.known.get_mut(&id) {
                Some(k) if k.handle == d => {
                    if !k.shutdown_fired
                        && self.store.is_introduced(id)
                        && d.shutdown_reason().is_some()
                    {
                        k.shutdown_fired = true;
                        shut.push(id);
                    }
                }
                Some(_) => {
                    gone.push(id);
                    fresh.push(d);
                }
                None => fresh.push(d),
            }
        }
        for id in gone {
            sim.known.remove(&id);
            self.store.destroy_domain(id);
        }
        for d in fresh {
            self.store.create_domain(d.id());
            sim.known.insert(
                d.id(),
                Known {
                    handle: d,
                    shutdown_fired: false,
                },
            );
        }
        for id in shut {
            self.store.shutdown_domain(id);
        }
        self.process_notices();
        self.prune_rings();
    }

    /// Stop serving (unmap) the rings of domains that are no longer introduced. A ring
    /// stopped after an error has no Store connection, so its release brings no notice.
    fn prune_rings(&mut self) {
        let gone: Vec<DomId> = self
            .rings
            .keys()
            .filter(|d| !self.store.is_introduced(**d))
            .copied()
            .collect();
        for d in gone {
            self.detach_ring(d);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Rings.

    /// Read and handle every ring's requests; true if anything moved.
    fn ring_inputs(&mut self) -> bool {
        let doms: Vec<DomId> = self.rings.keys().copied().collect();
        let mut moved = false;
        for d in doms {
            moved |= self.ring_input(d);
        }
        moved
    }

    /// Read and handle `d`'s requests while the Store wants input.
    fn ring_input(&mut self, d: DomId) -> bool {
        let mut progress = false;
        let mut buf = [0u8; 1024];
        // At most this much per round, so that a guest writing as fast as we read cannot keep
        // the core locked: the service thread lets others in between rounds.
        for _ in 0..RING_ROUND_READS {
            let Some(r) = self.rings.get_mut(&d) else {
                return progress;
            };
            if r.stopped {
                return progress;
            }
            let Some(ring) = r.ring.as_mut() else {
                return progress;
            };
            if ring.connection() == XENSTORE_RECONNECT {
                // One reset per call: a guest asking again at once is served next round.
                self.reconnect(d);
                return true;
            }
            let conn = r.conn;
            if !self.store.wants_input(conn) {
                return progress;
            }
            let n = match ring.read(&mut buf) {
                Ok(0) => return progress,
                Ok(n) => n,
                Err(_) => {
                    self.fail_ring(d, XENSTORE_ERROR_RINGIDX);
                    return true;
                }
            };
            r.moved = true;
            progress = true;
            let mut msgs = Vec::new();
            let mut bad = false;
            let mut input = buf.get(..n).unwrap_or(&[]);
            while !input.is_empty() {
                match r.framer.push(input) {
                    Ok((used, m)) => {
                        input = input.get(used..).unwrap_or(&[]);
                        msgs.extend(m);
                    }
                    Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
            for m in &msgs {
                // Only dom0's XS_INTRODUCE can fail before the Store; a domU's is EACCES.
                let _ = self.handle(conn, m);
            }
            if bad {
                self.fail_ring(d, XENSTORE_ERROR_PROTO);
                return true;
            }
        }
        progress
    }

    /// Move the Store's output for `d` into its `rsp` ring, as far as it fits; notify the
    /// guest if an index moved during this pass.
    fn ring_output(&mut self, d: DomId) -> bool {
        let mut progress = false;
        loop {
            let Some(r) = self.rings.get_mut(&d) else {
                return progress;
            };
            if r.stopped {
                break;
            }
            if r.out.len() < RING_OUT_HIGH {
                for m in self.store.take_output(r.conn) {
                    if let Ok(b) = m.encode() {
                        r.out.extend(b);
                    }
                }
            }
            if r.out.is_empty() {
                break;
            }
            let Some(ring) = r.ring.as_mut() else {
                break;
            };
            let (front, _) = r.out.as_slices();
            match ring.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    r.out.drain(..n);
                    r.moved = true;
                    progress = true;
                }
                Err(_) => {
                    self.fail_ring(d, XENSTORE_ERROR_RINGIDX);
                    return true;
                }
            }
        }
        if let (Some(r), Some(sim)) = (self.rings.get_mut(&d), &self.sim) {
            if std::mem::take(&mut r.moved) {
                if let Some(p) = r.port {
                    // PeerGone: the guest died; the next look at the domains releases it.
                    let _ = sim.dom0.notify(p);
                }
            }
        }
        progress
    }

    /// Stop serving a ring: set its `error` field, notify, and drop the connection's
    /// watches, transactions and output (the domain stays introduced).
    fn fail_ring(&mut self, d: DomId, error: u32) {
        let Some(r) = self.rings.get_mut(&d) else {
            return;
        };
        if let Some(ring) = r.ring.as_mut() {
            ring.set_error(error);
        }
        r.stopped = true;
        r.moved = false;
        r.out.clear();
        if let (Some(p), Some(sim)) = (r.port, &self.sim) {
            let _ = sim.dom0.notify(p);
        }
        self.store.disconnect(r.conn);
    }

    /// `connection == XENSTORE_RECONNECT`: drop partial input and queued output, the
    /// connection's watches and transactions (what `XS_RESET_WATCHES` drops), reset the
    /// indexes and set `XENSTORE_CONNECTED`.
    fn reconnect(&mut self, d: DomId) {
        let Some(r) = self.rings.get_mut(&d) else {
            return;
        };
        r.framer.reset();
        r.out.clear();
        let _ = self.store.take_output(r.conn);
        if let Ok(m) = Request::ResetWatches.to_message(0, 0) {
            self.store.handle(r.conn, &m);
        }
        let _ = self.store.take_output(r.conn);
        if let Some(ring) = r.ring.as_mut() {
            ring.reset(0);
            ring.set_connected();
        }
        r.moved = true;
    }
}

/// Map `domid`'s `GNTTAB_RESERVED_XENSTORE` grant in dom0 and bind its `port`.
fn attach(dom0: &Domain, domid: DomId, port: EvtchnPort) -> Result<Attach, PlatformError> {
    let mapping = dom0.map(domid, GNTTAB_RESERVED_XENSTORE, false)?;
    match dom0.bind_interdomain(domid, port) {
        Ok(port) => Ok(Attach {
            mapping: MappedPage(mapping),
            port,
        }),
        Err(e) => {
            let _ = dom0.unmap(mapping);
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The guest side.

/// How long a guest client waits for a reply.
const GUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A simulated guest's xenstore page and event channel, as the toolstack (libxl's domain
/// builder) sets them up, and the guest's way to its client.
#[derive(Debug)]
pub struct SimGuest {
    domain: Domain,
    page: xen_platform::PageRun,
    frame: XenPfn,
    port: EvtchnPort,
}

impl SimGuest {
    /// The toolstack's part for `guest`: allocate its xenstore page (zeroed) in the guest,
    /// grant it to dom0 through the reserved entry `GNTTAB_RESERVED_XENSTORE`, allocate an
    /// unbound port for dom0 (`store_evtchn`), and publish both as `HVM_PARAM_STORE_PFN` and
    /// `HVM_PARAM_STORE_EVTCHN`. Then the domain is introduced (`XS_INTRODUCE(domid, frame,
    /// port)`, or [`Xenstored::introduce_domain`]).
    pub fn build(guest: &Domain) -> Result<SimGuest, PlatformError> {
        let page = guest.alloc(1)?;
        let frame = match guest.frame(page.addr) {
            Ok(f) => f,
            Err(e) => {
                let _ = guest.free(page);
                return Err(e);
            }
        };
        if let Err(e) = guest.grant_reserved(GNTTAB_RESERVED_XENSTORE, 0, frame, false) {
            let _ = guest.free(page);
            return Err(e);
        }
        let port = guest.alloc_unbound(0)?;
        guest.set_hvm_param(HVM_PARAM_STORE_PFN, frame);
        guest.set_hvm_param(HVM_PARAM_STORE_EVTCHN, u64::from(port));
        Ok(SimGuest {
            domain: guest.clone(),
            page,
            frame,
            port,
        })
    }

    /// The guest domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The domid.
    pub fn domid(&self) -> DomId {
        self.domain.id()
    }

    /// The page's frame (`HVM_PARAM_STORE_PFN`; the `mfn` of `XS_INTRODUCE`).
    pub fn frame(&self) -> XenPfn {
        self.frame
    }

    /// The guest's port (`HVM_PARAM_STORE_EVTCHN`).
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// Where the page is in this process (the guest's address of it) — for fault-injection
    /// tests that play a misbehaving guest. Any access must go through atomics or volatile
    /// copies: the daemon shares the page.
    pub fn page(&self) -> NonNull<u8> {
        self.page.addr
    }

    /// The guest side: find the page and port from the HVM parameters, as a PVH guest does,
    /// and make the ring transport (the page is the guest's own; one transport per guest).
    pub fn transport(self) -> Result<OwnedRing<Domain>, PlatformError> {
        let pfn = self
            .domain
            .hvm_param(HVM_PARAM_STORE_PFN)
            .ok_or(PlatformError::NotFound)?;
        let port = self
            .domain
            .hvm_param(HVM_PARAM_STORE_EVTCHN)
            .and_then(|p| EvtchnPort::try_from(p).ok())
            .ok_or(PlatformError::NotFound)?;
        let addr: NonNull<u8> = self.page.addr;
        if self.domain.frame(addr)? != pfn {
            return Err(PlatformError::Invalid);
        }
        // SAFETY: `addr` is the start of a page-aligned 4096-byte page this guest allocated
        // in `build` and never frees (it stays granted, so `Pages::free` would refuse it
        // anyway); the simulator keeps a domain's pages mapped while the domain lives and
        // replaces them with anonymous memory (never unmaps them) when it is destroyed,
        // until the Hypervisor is dropped — which the Domain handle given to the OwnedRing
        // as its `keep` prevents. The daemon writes the page concurrently through its own
        // mapping, which is what XsGuestRing is for; no Rust reference to the page exists,
        // and `self` is consumed, so this is the only XsGuestRing on it.
        let ring = unsafe { XsGuestRing::new(addr) }?;
        let keep = Box::new(self.domain.clone());
        Ok(OwnedRing::new(ring, self.domain, port, keep))
    }

    /// [`transport`](Self::transport), connected (a ring reset in progress waited out), as a
    /// client with a 10 s request timeout.
    pub fn client(self) -> Result<Client<OwnedRing<Domain>>, xen_store::client::XsClientError> {
        let mut t = self.transport()?;
        t.connect(GUEST_TIMEOUT)?;
        Ok(Client::with_config(
            t,
            ClientConfig {
                timeout: GUEST_TIMEOUT,
                ..ClientConfig::default()
            },
        ))
    }
}
