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
//! * **The service thread** owns the [`Store`] and every connection. It waits — never spins —
//!   with [`Events::wait`] on dom0's ports (each served ring's port, plus a *doorbell*: a
//!   loopback event channel of dom0 that the socket threads notify), or on a condition
//!   variable when no hypervisor is attached, with a [`TICK`] timeout. Each time it wakes it
//!   clears those ports, looks at the hypervisor's domains, runs queued commands, then serves
//!   every connection until nothing moves.
//! * **Per socket connection**, a reader thread (frames requests into a bounded channel — a
//!   client that sends faster than the store answers is held back there — and rings the
//!   doorbell) and a writer thread (writes replies; the service thread hands it at most
//!   [`SOCKET_HIGH`] bytes at a time, the rest waits in the Store's own bounded queue).
//! * **Per socket**, a listener thread accepting connections.
//!
//! # Rings (xenstore-ring.txt)
//! The daemon side of each page is an [`XsServerRing`]. A pass reads requests while the
//! Store [`wants_input`](Store::wants_input), hands each to [`Store::handle`], buffers replies
//! in memory and writes what fits — it never waits for room in `rsp`, so it never stops
//! reading `req` for that reason. The guest is notified once per pass in which an index moved
//! (before the service thread sleeps again). We advertise `XENSTORE_SERVER_FEATURE_ERROR` and
//! `_RECONNECTION`: corrupt indexes ([`xen_platform::Error::RingOverflow`]) set
//! `XENSTORE_ERROR_RINGIDX`, a header claiming more than 4096 bytes sets
//! `XENSTORE_ERROR_PROTO`, a connection cut off for not reading its replies
//! ([`Store::is_broken`]) sets `XENSTORE_ERROR_COMM` — then we notify and stop serving that
//! ring (its watches and transactions are dropped; the domain stays introduced until it is
//! released or dies, as xenstored's `ignore_connection()` does). `connection ==
//! XENSTORE_RECONNECT` drops partial input, queued output, watches and transactions, resets
//! the indexes and sets `XENSTORE_CONNECTED`.
//!
//! # Domains (what the hypervisor tells xenstored)
//! A domain exists for the Store while it exists in the simulator ([`Store::create_domain`]
//! when first seen, [`Store::destroy_domain`] once gone — which removes its nodes and fires
//! `@releaseDomain`, as `VIRQ_DOM_EXC` makes the C daemon do); a domain that calls
//! `shutdown` fires `@releaseDomain` once ([`Store::shutdown_domain`]). The simulator has no
//! VIRQ: the service thread looks at every wake-up (at least every [`TICK`]), and
//! [`Xenstored::kick`] makes it look at once.
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
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
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

/// The longest the service thread sleeps: how late it may notice a domain that died without
/// a [`Xenstored::kick`].
pub const TICK: Duration = Duration::from_millis(100);

/// Bytes of replies handed to a socket's writer thread and not yet written, above which the
/// service thread leaves further output in the Store's queue (whose bound then applies).
pub const SOCKET_HIGH: usize = 64 * 1024;

/// Requests a socket's reader thread may have framed ahead of the service thread.
const SOCKET_INPUT_DEPTH: usize = 64;

/// Reply bytes buffered for a ring above which no more output is taken from the Store.
const RING_OUT_HIGH: usize = 2048;

/// The features we advertise on every ring.
const FEATURES: u32 = XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR;

static DAEMON_SEQ: AtomicUsize = AtomicUsize::new(0);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn other(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

// ---------------------------------------------------------------------------------------------
// The doorbell.

/// How other threads wake the service thread.
#[derive(Clone)]
enum Bell {
    /// No hypervisor: a flag and a condition variable.
    Plain(Arc<(Mutex<bool>, Condvar)>),
    /// With a hypervisor: notify `port`, dom0's end of a loopback event channel whose other
    /// end the service thread waits on together with the rings' ports.
    Sim { dom0: Domain, port: EvtchnPort },
}

impl Bell {
    fn ring(&self) {
        match self {
            Bell::Plain(p) => {
                *lock(&p.0) = true;
                p.1.notify_one();
            }
            Bell::Sim { dom0, port } => {
                // Fails only once dom0 is gone, and then nobody is served any more.
                let _ = dom0.notify(*port);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands to the service thread.

type Call = Box<dyn FnOnce(&mut Daemon) + Send>;

enum Cmd {
    /// A new socket connection with its threads' channels.
    Socket(SocketParts),
    /// Run on the service thread.
    Call(Call),
    /// Stop serving.
    Stop,
}

/// What a socket's reader thread passes on.
enum SockIn {
    Msg(Message),
    /// End of stream, or an I/O error.
    Eof,
    /// A framing error (a header with `len` > 4096): the connection is dropped.
    Bad,
}

struct SocketParts {
    stream: UnixStream,
    input: Receiver<SockIn>,
    output: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    throttled: Arc<AtomicBool>,
}

// ---------------------------------------------------------------------------------------------
// The public handle.

/// Our xenstored. See the [module docs](self). Dropping it stops every thread it started and
/// removes the sockets it created.
pub struct Xenstored {
    cmds: Sender<Cmd>,
    /// The service thread's name (`xenstored-N`, at most 15 bytes: a whole Linux `comm`).
    name: String,
    bell: Bell,
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
        let bell = Bell::Plain(Arc::new((Mutex::new(false), Condvar::new())));
        Self::spawn(quotas, bell, None)
    }

    /// A daemon running in dom0 of `hv` (which must exist), serving the simulated domains
    /// that are introduced to it, and Unix sockets once [`serve_socket`](Self::serve_socket)
    /// is called.
    pub fn start_sim(hv: &Arc<Hypervisor>, quotas: Quotas) -> std::io::Result<Xenstored> {
        let dom0 = hv
            .domain(0)
            .ok_or_else(|| other("the hypervisor has no dom0 for xenstored to run in"))?;
        // The doorbell: a loopback channel in dom0. The service thread waits on `wait_port`,
        // the socket threads notify `ring_port` (whose peer it is).
        let wait_port = dom0
            .alloc_unbound(0)
            .map_err(|e| other(format!("doorbell: {e}")))?;
        let ring_port = dom0
            .bind_interdomain(0, wait_port)
            .map_err(|e| other(format!("doorbell: {e}")))?;
        let bell = Bell::Sim {
            dom0: dom0.clone(),
            port: ring_port,
        };
        let sim = SimSide {
            hv: hv.clone(),
            dom0,
            bell_ports: (wait_port, ring_port),
            known: BTreeMap::new(),
            epoch: None,
        };
        Ok(Self::spawn(quotas, bell, Some(sim)))
    }

    fn spawn(quotas: Quotas, bell: Bell, sim: Option<SimSide>) -> Xenstored {
        let (tx, rx) = mpsc::channel();
        let hv = sim.as_ref().map(|s| s.hv.clone());
        let plain = match &bell {
            Bell::Plain(p) => Some(p.clone()),
            Bell::Sim { .. } => None,
        };
        let name = format!(
            "xenstored-{}",
            DAEMON_SEQ.fetch_add(1, Ordering::Relaxed) % 100_000
        );
        let service = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let d = Daemon {
                    store: Store::new(quotas),
                    sim,
                    plain,
                    sockets: BTreeMap::new(),
                    rings: BTreeMap::new(),
                    prepared: BTreeMap::new(),
                    stop: false,
                };
                d.run(rx);
            })
            .expect("spawn the xenstored service thread");
        Xenstored {
            cmds: tx,
            bell,
            service: Some(service),
            name,
            listeners: Mutex::new(Vec::new()),
            hv,
        }
    }

    /// The service thread's name, `xenstored-N` (N counts daemons started in this process),
    /// as `/proc/self/task/*/comm` shows it.
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
        let (stop2, cmds, bell) = (stop.clone(), self.cmds.clone(), self.bell.clone());
        let thread = std::thread::Builder::new()
            .name("xenstored-accept".into())
            .spawn(move || accept_loop(listener, stop2, cmds, bell))?;
        lock(&self.listeners).push(Listener {
            path,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Run `f` on the Store, on the service thread (between requests), and return its result.
    /// Domains introduced or released by `f` are attached or detached afterwards.
    ///
    /// # Panics
    /// If the service thread is gone (it panicked).
    pub fn with_store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> R + Send + 'static,
    ) -> R {
        self.call(move |d| {
            let r = f(&mut d.store);
            d.process_notices();
            r
        })
    }

    fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Daemon) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let sent = self.cmds.send(Cmd::Call(Box::new(move |d| {
            let _ = tx.send(f(d));
        })));
        self.bell.ring();
        match sent.ok().and_then(|()| rx.recv().ok()) {
            Some(r) => r,
            None => panic!("the xenstored service thread is gone"),
        }
    }

    /// Look at the hypervisor's domains now (what `VIRQ_DOM_EXC` makes xenstored do): domains
    /// destroyed since are released, and their rings unmapped. Returns at once; the work is
    /// done on the service thread.
    pub fn kick(&self) {
        self.bell.ring();
    }

    /// Like [`kick`](Self::kick), and wait until the service thread has looked.
    pub fn sync(&self) {
        self.call(|_| ());
    }

    /// `XS_INTRODUCE(domid, 0, port)` from a privileged connection: map the domain's
    /// `GNTTAB_RESERVED_XENSTORE` grant, bind `port`, and introduce it (firing
    /// `@introduceDomain` the first time). The error is the reply xenstored would give.
    pub fn introduce_domain(&self, domid: DomId, port: EvtchnPort) -> Result<(), XsError> {
        self.call(move |d| {
            d.internal_request(&Request::Introduce {
                domid,
                mfn: 0,
                port,
            })
        })
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

    /// Destroy domain `domid` in the hypervisor and wait until the daemon has released it
    /// (its nodes removed, `@releaseDomain` fired, its ring unmapped).
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
        self.call(|d| d.rings.iter().map(|(&k, r)| (k, !r.stopped)).collect())
    }

    /// Open socket connections.
    pub fn socket_connections(&self) -> usize {
        self.call(|d| d.sockets.len())
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        let listeners = std::mem::take(&mut *lock(&self.listeners));
        for mut l in listeners {
            l.stop.store(true, Ordering::SeqCst);
            // Wake the accept() (a connection we drop at once), then wait for the thread. If
            // the socket file was removed behind our back nothing can wake it: leave it.
            if UnixStream::connect(&l.path).is_ok() {
                if let Some(t) = l.thread.take() {
                    let _ = t.join();
                }
            }
            let _ = std::fs::remove_file(&l.path);
        }
        let _ = self.cmds.send(Cmd::Stop);
        self.bell.ring();
        if let Some(t) = self.service.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Socket threads.

fn accept_loop(listener: UnixListener, stop: Arc<AtomicBool>, cmds: Sender<Cmd>, bell: Bell) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // EMFILE and the like: do not spin on it.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Some(parts) = start_socket_threads(stream, &bell) else {
            continue;
        };
        if cmds.send(Cmd::Socket(parts)).is_err() {
            return;
        }
        bell.ring();
    }
}

/// Start the reader and writer threads of an accepted connection.
fn start_socket_threads(stream: UnixStream, bell: &Bell) -> Option<SocketParts> {
    let reader = stream.try_clone().ok()?;
    let writer = stream.try_clone().ok()?;
    let (in_tx, in_rx) = mpsc::sync_channel(SOCKET_INPUT_DEPTH);
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let throttled = Arc::new(AtomicBool::new(false));
    let b = bell.clone();
    std::thread::Builder::new()
        .name("xenstored-read".into())
        .spawn(move || socket_reader(reader, in_tx, b))
        .ok()?;
    let (q, t, b) = (queued.clone(), throttled.clone(), bell.clone());
    std::thread::Builder::new()
        .name("xenstored-write".into())
        .spawn(move || socket_writer(writer, out_rx, q, t, b))
        .ok()?;
    Some(SocketParts {
        stream,
        input: in_rx,
        output: out_tx,
        queued,
        throttled,
    })
}

/// Frame requests and pass them on; the channel is bounded, so a client that sends faster
/// than the service thread handles its requests waits (the socket buffer fills up).
fn socket_reader(mut stream: UnixStream, tx: SyncSender<SockIn>, bell: Bell) {
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut input = buf.get(..n).unwrap_or(&[]);
        let mut rung = true;
        while !input.is_empty() {
            match framer.push(input) {
                Ok((used, msg)) => {
                    input = input.get(used..).unwrap_or(&[]);
                    if let Some(m) = msg {
                        match tx.try_send(SockIn::Msg(m)) {
                            Ok(()) => rung = false,
                            Err(TrySendError::Full(m)) => {
                                // Make sure the service thread is awake before we block.
                                bell.ring();
                                if tx.send(m).is_err() {
                                    return;
                                }
                                rung = false;
                            }
                            Err(TrySendError::Disconnected(_)) => return,
                        }
                    }
                }
                Err(_) => {
                    let _ = tx.send(SockIn::Bad);
                    bell.ring();
                    return;
                }
            }
        }
        if !rung {
            bell.ring();
        }
    }
    let _ = tx.send(SockIn::Eof);
    bell.ring();
}

/// Write what the service thread hands over; when the backlog drops below [`SOCKET_HIGH`]
/// and the service thread held output back, wake it.
fn socket_writer(
    mut stream: UnixStream,
    rx: Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    throttled: Arc<AtomicBool>,
    bell: Bell,
) {
    for bytes in rx {
        if stream.write_all(&bytes).is_err() {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let before = queued.fetch_sub(bytes.len(), Ordering::AcqRel);
        if before.saturating_sub(bytes.len()) < SOCKET_HIGH
            && throttled.swap(false, Ordering::AcqRel)
        {
            bell.ring();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The service thread.

struct SimSide {
    hv: Arc<Hypervisor>,
    dom0: Domain,
    /// The doorbell: (the port waited on, the port others notify).
    bell_ports: (EvtchnPort, EvtchnPort),
    /// Domains the Store was told about, with the handle of that incarnation.
    known: BTreeMap<DomId, Known>,
    /// [`Hypervisor::domain_epoch`] when `known` was last brought up to date.
    epoch: Option<u64>,
}

struct Known {
    handle: Domain,
    shutdown_fired: bool,
}

struct SocketConn {
    stream: UnixStream,
    input: Receiver<SockIn>,
    output: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    throttled: Arc<AtomicBool>,
}

/// A domain's ring page as the daemon serves it.
struct RingConn {
    conn: ConnId,
    /// Dropped before `mapping` is unmapped (it points into it).
    ring: Option<XsServerRing>,
    mapping: Option<Mapping>,
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
    mapping: Mapping,
    port: EvtchnPort,
}

struct Daemon {
    store: Store,
    sim: Option<SimSide>,
    plain: Option<Arc<(Mutex<bool>, Condvar)>>,
    sockets: BTreeMap<ConnId, SocketConn>,
    rings: BTreeMap<DomId, RingConn>,
    prepared: BTreeMap<DomId, Attach>,
    stop: bool,
}

impl Daemon {
    fn run(mut self, rx: Receiver<Cmd>) {
        loop {
            self.sync_domains();
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.stop = true;
                        break;
                    }
                }
            }
            if self.stop {
                break;
            }
            while self.pass() {}
            self.wait();
        }
        self.shutdown();
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Socket(p) => {
                let id = self.store.connect(0);
                self.sockets.insert(
                    id,
                    SocketConn {
                        stream: p.stream,
                        input: p.input,
                        output: p.output,
                        queued: p.queued,
                        throttled: p.throttled,
                    },
                );
            }
            Cmd::Call(f) => f(self),
            Cmd::Stop => self.stop = true,
        }
    }

    /// Sleep until a port (or the doorbell) fires, or [`TICK`].
    fn wait(&mut self) {
        if let Some(p) = &self.plain {
            let mut rung = lock(&p.0);
            if !*rung {
                rung =
                    p.1.wait_timeout(rung, TICK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
            }
            *rung = false;
            return;
        }
        let Some(sim) = &self.sim else {
            return;
        };
        let mut ports = vec![sim.bell_ports.0];
        ports.extend(
            self.rings
                .values()
                .filter(|r| !r.stopped)
                .filter_map(|r| r.port),
        );
        match sim.dom0.wait(&ports, Some(TICK)) {
            Ok(_) | Err(PlatformError::Timeout) => {}
            Err(PlatformError::NoSuchDomain) => self.stop = true,
            // Not expected (the doorbell never goes away); do not spin on it.
            Err(_) => std::thread::sleep(TICK),
        }
        // Clear before serving: whatever is published after this sets the bit again.
        for p in ports {
            sim.dom0.clear(p);
        }
    }

    /// Serve every connection once; true if anything moved.
    fn pass(&mut self) -> bool {
        let mut progress = false;
        let ids: Vec<ConnId> = self.sockets.keys().copied().collect();
        for id in &ids {
            progress |= self.socket_input(*id);
        }
        let doms: Vec<DomId> = self.rings.keys().copied().collect();
        for d in &doms {
            progress |= self.ring_input(*d);
        }
        let ids: Vec<ConnId> = self.sockets.keys().copied().collect();
        for id in ids {
            progress |= self.socket_output(id, false);
        }
        let doms: Vec<DomId> = self.rings.keys().copied().collect();
        for d in doms {
            progress |= self.ring_output(d);
        }
        self.cleanup();
        progress
    }

    // -----------------------------------------------------------------------------------------
    // Requests and notices.

    /// Handle one request of `conn`, then act on the Store's notices. `Err` is a reply made
    /// here for an `XS_INTRODUCE` whose ring could not be attached (the Store never saw it).
    fn handle(&mut self, conn: ConnId, msg: &Message) -> Result<(), XsError> {
        // A domain the requester created (or destroyed) just before must count.
        self.sync_domains();
        if matches!(msg.msg_type(), Ok(MsgType::Introduce))
            && self.store.conn_domid(conn) == Some(0)
        {
            self.prepare_introduce(msg)?;
        }
        self.store.handle(conn, msg);
        self.process_notices();
        self.prune_rings();
        // An attachment the Store did not use (it refused the request).
        for (d, a) in std::mem::take(&mut self.prepared) {
            self.undo_attach(d, a);
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
            self.undo_attach(domid, old);
        }
        Ok(())
    }

    fn undo_attach(&mut self, _domid: DomId, a: Attach) {
        if let Some(sim) = &self.sim {
            let _ = sim.dom0.unmap(a.mapping);
            let _ = sim.dom0.close(a.port);
        }
    }

    /// An `XS_ERROR` reply made here rather than by the Store, after what the Store queued
    /// for the connection before.
    fn reply_error(&mut self, conn: ConnId, req: &Message, e: XsError) {
        let Ok(m) = Response::Error(e).to_message(req.header.req_id, req.header.tx_id) else {
            return;
        };
        self.socket_output(conn, true);
        if let (Some(s), Ok(bytes)) = (self.sockets.get(&conn), m.encode()) {
            s.queued.fetch_add(bytes.len(), Ordering::AcqRel);
            let _ = s.output.send(bytes);
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
        let ring = match unsafe { XsServerRing::new(a.mapping.addr) } {
            Ok(r) => r,
            Err(_) => {
                self.undo_attach(domid, a);
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
                let _ = sim.dom0.unmap(m);
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
    // Sockets.

    /// Handle the requests a socket's reader framed, while the Store wants input.
    fn socket_input(&mut self, id: ConnId) -> bool {
        let mut progress = false;
        while self.store.wants_input(id) {
            let Some(s) = self.sockets.get(&id) else {
                break;
            };
            match s.input.try_recv() {
                Ok(SockIn::Msg(m)) => {
                    if let Err(e) = self.handle(id, &m) {
                        self.reply_error(id, &m, e);
                    }
                    progress = true;
                }
                Ok(SockIn::Eof | SockIn::Bad) | Err(TryRecvError::Disconnected) => {
                    self.drop_socket(id);
                    return true;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        progress
    }

    /// Hand the Store's output for `id` to its writer (unless the writer is [`SOCKET_HIGH`]
    /// behind and `force` is not set).
    fn socket_output(&mut self, id: ConnId, force: bool) -> bool {
        let Some(s) = self.sockets.get(&id) else {
            return false;
        };
        if !force && s.queued.load(Ordering::Acquire) >= SOCKET_HIGH {
            s.throttled.store(true, Ordering::Release);
            // The writer may have caught up before it could see the flag.
            if s.queued.load(Ordering::Acquire) >= SOCKET_HIGH {
                return false;
            }
        }
        let msgs = self.store.take_output(id);
        if msgs.is_empty() {
            return false;
        }
        let mut bytes = Vec::new();
        for m in msgs {
            if let Ok(b) = m.encode() {
                bytes.extend_from_slice(&b);
            }
        }
        s.queued.fetch_add(bytes.len(), Ordering::AcqRel);
        let _ = s.output.send(bytes);
        true
    }

    /// Close a socket connection (EOF, a bad message, or cut off): the Store forgets it, and
    /// the client sees the connection closed.
    fn drop_socket(&mut self, id: ConnId) {
        if let Some(s) = self.sockets.remove(&id) {
            let _ = s.stream.shutdown(Shutdown::Both);
        }
        self.store.disconnect(id);
    }

    // -----------------------------------------------------------------------------------------
    // Rings.

    /// Read and handle `d`'s requests while the Store wants input.
    fn ring_input(&mut self, d: DomId) -> bool {
        let mut progress = false;
        let mut buf = [0u8; 1024];
        loop {
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
                // One reset per call: a guest asking again at once is served next pass.
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

    /// Drop what the Store cut off; stop serving rings of domains no longer introduced.
    fn cleanup(&mut self) {
        let dead: Vec<ConnId> = self
            .sockets
            .keys()
            .filter(|id| self.store.is_broken(**id) || !self.store.is_connected(**id))
            .copied()
            .collect();
        for id in dead {
            self.drop_socket(id);
        }
        self.prune_rings();
        let broken: Vec<DomId> = self
            .rings
            .iter()
            .filter(|(_, r)| !r.stopped && self.store.is_broken(r.conn))
            .map(|(&d, _)| d)
            .collect();
        for d in broken {
            self.fail_ring(d, XENSTORE_ERROR_COMM);
        }
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
            let _ = sim.dom0.close(sim.bell_ports.1);
            let _ = sim.dom0.close(sim.bell_ports.0);
        }
    }
}

/// Map `domid`'s `GNTTAB_RESERVED_XENSTORE` grant in dom0 and bind its `port`.
fn attach(dom0: &Domain, domid: DomId, port: EvtchnPort) -> Result<Attach, PlatformError> {
    let mapping = dom0.map(domid, GNTTAB_RESERVED_XENSTORE, false)?;
    match dom0.bind_interdomain(domid, port) {
        Ok(port) => Ok(Attach { mapping, port }),
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
