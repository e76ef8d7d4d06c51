//! The client over the real ring transport: a guest domain grants its xenstore page to dom0 and
//! offers an event channel; a daemon thread in dom0 maps the page, binds the channel and serves
//! requests through `XsServerRing` — all on the simulator, so the bytes cross a real shared page
//! at two different addresses and every wakeup is an event-channel notification.
//!
//! Checked: messages far larger than the free space (4 KiB payloads through a 1 KiB ring),
//! hundreds of kilobytes so indexes wrap the buffer many times and — starting near `u32::MAX` —
//! the 32-bit index too; watch events interleaved with replies; a corrupt ring, a daemon that
//! reports an error, a daemon destroyed mid-request and a silent daemon all end in an error
//! within the timeout; ring reconnection both ways.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_platform::abi::xs::{
    XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_RECONNECT,
    XENSTORE_SERVER_FEATURE_ERROR, XENSTORE_SERVER_FEATURE_RECONNECTION,
};
use xen_platform::xs_ring::{XsGuestRing, XsIndex, XsServerRing};
use xen_platform::{Error, Events, GrantMapper, Grants, Mapping, PageRun, Pages};
use xen_sim::{Domain, Hypervisor};
use xen_store::client::{Client, ClientConfig, Store, XsClientError};
use xen_store::transport::RingTransport;
use xen_store::wire::Message;
use xen_store::{EvtchnPort, Framer, Path, Request, Response, XsError};

/// What the daemon does for one request.
enum Act {
    Reply(Response),
    Event(String, String),
    /// Raw bytes into the response stream.
    Bytes(Vec<u8>),
    /// Publish `rsp_prod = rsp_cons + 5000`.
    CorruptRspProd,
    /// Set the error field (and stop serving).
    SetError(u32),
    /// Destroy the daemon's domain (after flushing what is queued).
    DestroySelf,
}

type Script = Box<dyn FnMut(&Message, &Request) -> Vec<Act> + Send>;

#[derive(Debug, Default)]
struct Served {
    requests: usize,
    reconnects: usize,
}

/// A guest and a dom0 sharing a xenstore page and an event channel, the dom0 side served by a
/// daemon thread.
struct World {
    _hv: Arc<Hypervisor>,
    guest: Domain,
    dom0: Domain,
    page: Option<PageRun>,
    gref: u32,
    gport: EvtchnPort,
    stop: Arc<AtomicBool>,
    mapping: Option<Mapping>,
    daemon: Option<JoinHandle<Served>>,
}

impl World {
    /// Indexes start at `start`; the daemon advertises `features` and runs `script`.
    fn new(start: u32, features: u32, script: Script) -> World {
        let hv = Hypervisor::new();
        let dom0 = hv.create_domain("Domain-0");
        let guest = hv.create_domain("guest");
        let page = guest.alloc(1).unwrap();
        let frame = guest.frame(page.addr).unwrap();
        let gref = guest.grant(dom0.id(), frame, false).unwrap();
        let gport = guest.alloc_unbound(dom0.id()).unwrap();
        let dport = dom0.bind_interdomain(guest.id(), gport).unwrap();
        let mapping = dom0.map(guest.id(), gref, false).unwrap();
        assert_ne!(mapping.addr, page.addr, "two views of one page");
        // SAFETY: a live one-page grant mapping, used only by the daemon thread through this
        // wrapper, unmapped only after the thread ended.
        let mut ring = unsafe { XsServerRing::new(mapping.addr) }.unwrap();
        ring.reset(start);
        ring.add_server_features(features);
        let stop = Arc::new(AtomicBool::new(false));
        let daemon = {
            let (dom0, stop) = (dom0.clone(), stop.clone());
            std::thread::spawn(move || serve(&dom0, &mut ring, dport, start, script, &stop))
        };
        World {
            _hv: hv,
            guest,
            dom0,
            page: Some(page),
            gref,
            gport,
            stop,
            mapping: Some(mapping),
            daemon: Some(daemon),
        }
    }

    fn guest_ring(&self) -> XsGuestRing {
        // SAFETY: the guest's own page, alive until World::drop (after every client, which
        // borrows the World, is gone); one guest-side wrapper per test.
        unsafe { XsGuestRing::new(self.page.as_ref().unwrap().addr) }.unwrap()
    }

    fn transport(&self) -> RingTransport<'_, Domain> {
        RingTransport::new(self.guest_ring(), &self.guest, self.gport)
    }

    fn client(&self, timeout: Duration) -> Client<RingTransport<'_, Domain>> {
        let mut t = self.transport();
        t.connect(timeout).unwrap();
        Client::with_config(
            t,
            ClientConfig {
                timeout,
                ..ClientConfig::default()
            },
        )
    }

    /// A shared `u32` field of the guest's page (the test plays the toolstack).
    fn field(&self, offset: usize) -> &AtomicU32 {
        let p = self.page.as_ref().unwrap().addr;
        // SAFETY: a 4-aligned offset inside the live page.
        unsafe { AtomicU32::from_ptr(p.as_ptr().add(offset).cast()) }
    }

    fn stop(&mut self) -> Served {
        self.stop.store(true, Ordering::SeqCst);
        let Some(d) = self.daemon.take() else {
            return Served::default();
        };
        let served = d.join().unwrap();
        // The daemon is done with the page (a destroyed dom0 lost its mappings already).
        if let Some(m) = self.mapping.take() {
            if self.dom0.is_alive() {
                self.dom0.unmap(m).unwrap();
            }
        }
        served
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
        if self.dom0.is_alive() {
            self.guest.end(self.gref).unwrap();
        }
        let _ = self.guest.free(self.page.take().unwrap());
    }
}

/// The daemon: read requests, run the script, write replies, handle reconnects.
fn serve(
    dom0: &Domain,
    ring: &mut XsServerRing,
    port: EvtchnPort,
    start: u32,
    mut script: Script,
    stop: &AtomicBool,
) -> Served {
    let mut served = Served::default();
    let mut framer = Framer::new();
    let mut out: Vec<u8> = Vec::new();
    // Odd read sizes, so requests are taken in pieces.
    let mut buf = [0u8; 333];
    let reconnection = ring.server_features() & XENSTORE_SERVER_FEATURE_RECONNECTION != 0;
    let flush = |ring: &mut XsServerRing, out: &mut Vec<u8>| -> bool {
        match ring.write(out) {
            Ok(0) => false,
            Ok(w) => {
                out.drain(..w);
                let _ = dom0.notify(port);
                true
            }
            Err(e) => panic!("daemon write: {e}"),
        }
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return served;
        }
        if reconnection && ring.connection() == XENSTORE_RECONNECT {
            framer.reset();
            out.clear();
            ring.reset(start.wrapping_add(served.reconnects as u32 * 1000 + 777));
            ring.set_connected();
            served.reconnects += 1;
            let _ = dom0.notify(port);
            continue;
        }
        let mut progress = false;
        match ring.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                progress = true;
                let _ = dom0.notify(port);
                let msgs: Vec<Message> = framer.feed(&buf[..n]).map(|m| m.unwrap()).collect();
                for m in msgs {
                    served.requests += 1;
                    let req = Request::from_message(&m).unwrap();
                    for act in script(&m, &req) {
                        match act {
                            Act::Reply(r) => out.extend(
                                r.to_message(m.header.req_id, m.header.tx_id)
                                    .unwrap()
                                    .encode()
                                    .unwrap(),
                            ),
                            Act::Event(path, token) => out.extend(
                                Response::WatchEvent {
                                    path: Path::new(&path).unwrap(),
                                    token,
                                }
                                .to_message(0, 0)
                                .unwrap()
                                .encode()
                                .unwrap(),
                            ),
                            Act::Bytes(b) => out.extend(b),
                            Act::CorruptRspProd => {
                                while !out.is_empty() && flush(ring, &mut out) {}
                                let cons = ring.indexes().rsp_cons;
                                ring.store_index_unchecked(
                                    XsIndex::RspProd,
                                    cons.wrapping_add(5000),
                                );
                                let _ = dom0.notify(port);
                            }
                            Act::SetError(e) => {
                                ring.set_error(e);
                                let _ = dom0.notify(port);
                                return served;
                            }
                            Act::DestroySelf => {
                                while !out.is_empty() && flush(ring, &mut out) {}
                                dom0.destroy().unwrap();
                                return served;
                            }
                        }
                    }
                }
            }
            Err(Error::RingOverflow) => {
                ring.set_error(XENSTORE_ERROR_RINGIDX);
                let _ = dom0.notify(port);
                return served;
            }
            Err(e) => panic!("daemon read: {e}"),
        }
        if !out.is_empty() && flush(ring, &mut out) {
            progress = true;
        }
        if !progress {
            dom0.clear(port);
            let more = ring.req_available().unwrap_or(0) > 0
                || (!out.is_empty() && ring.rsp_space().unwrap_or(0) > 0)
                || (reconnection && ring.connection() == XENSTORE_RECONNECT);
            if !more {
                match dom0.wait(&[port], Some(Duration::from_millis(20))) {
                    Ok(_) | Err(Error::Timeout) => {}
                    Err(_) => return served,
                }
            }
        }
    }
}

/// A small key-value daemon: READ/WRITE/RM/DIRECTORY/WATCH/transactions; an event for token
/// `"w"` before every 7th reply.
fn kv_daemon() -> Script {
    let mut kv: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut n = 0u32;
    Box::new(move |_, req| {
        n += 1;
        let mut acts = vec![];
        if n.rem_euclid(7) == 0 {
            acts.push(Act::Event(format!("/ev/{n}"), "w".into()));
        }
        acts.push(match req {
            Request::Read(p) => match kv.get(p.as_str()) {
                Some(v) => Act::Reply(Response::Read(v.clone())),
                None => Act::Reply(Response::Error(XsError::Enoent)),
            },
            Request::Write { path, value } => {
                kv.insert(path.to_string(), value.clone());
                Act::Reply(Response::Ok(req.msg_type()))
            }
            Request::Rm(p) => {
                kv.remove(p.as_str());
                Act::Reply(Response::Ok(req.msg_type()))
            }
            Request::Directory(p) => {
                let prefix = format!("{p}/");
                Act::Reply(Response::Directory(
                    kv.keys()
                        .filter_map(|k| k.strip_prefix(&prefix))
                        .filter(|k| !k.contains('/'))
                        .map(String::from)
                        .collect(),
                ))
            }
            Request::TransactionStart => Act::Reply(Response::TransactionStart(n)),
            Request::GetDomainPath(d) => Act::Reply(Response::GetDomainPath(
                Path::new(&format!("/local/domain/{d}")).unwrap(),
            )),
            other => Act::Reply(Response::Ok(other.msg_type())),
        });
        acts
    })
}

fn value(i: usize) -> Vec<u8> {
    // Sizes from 0 to 4000 bytes, so a write or a read reply (with its 16-byte header) is
    // anything from tiny to four times the ring.
    let len = (i * 997) % 4001;
    (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect()
}

#[test]
fn large_messages_wrap_the_ring_and_the_u32_index() {
    let start = u32::MAX - 1500;
    let w = World::new(start, 0, kv_daemon());
    let mut c = w.client(Duration::from_secs(10));
    c.watch("/ev", "w").unwrap();
    let mut traffic = 0usize;
    for i in 0..150 {
        let key = format!("/data/k{i}");
        let v = value(i);
        c.write(&key, &v).unwrap();
        let back = c.read(&key).unwrap();
        assert!(back == v, "value {i} of {} bytes", v.len());
        traffic += 2 * v.len() + 64;
    }
    assert!(c.read("/data/none").unwrap_err().is_enoent());
    assert_eq!(c.directory("/data").unwrap().len(), 150);
    assert_eq!(c.get_domain_path(3).unwrap().as_str(), "/local/domain/3");
    let n = c.transact(|tx| {
        tx.write("/t", b"1")?;
        tx.read("/t")
    });
    assert_eq!(n.unwrap(), b"1");
    // Every 7th request produced an event ahead of its reply; none was taken for a reply.
    c.poll_watch_events().unwrap();
    let events = std::iter::from_fn(|| c.take_watch_event(Some("w"))).count();
    let served = 1 + 300 + 1 + 1 + 1 + 4;
    assert_eq!(events, served / 7);
    // The indexes went once round the u32 space and hundreds of times round the buffer.
    let ix = c.transport().ring().indexes();
    assert!(traffic > 300 * 1024);
    assert!(ix.req_prod < start && ix.rsp_prod < start, "{ix:?}");
    assert_eq!((ix.req_cons, ix.rsp_cons), (ix.req_prod, ix.rsp_prod));
    drop(c);
    let mut w = w;
    assert_eq!(w.stop().requests, served);
}

#[test]
fn a_corrupt_ring_is_an_error() {
    let w = World::new(
        12345,
        0,
        Box::new(|_, req| match req {
            Request::Read(_) => vec![Act::CorruptRspProd],
            other => vec![Act::Reply(Response::Ok(other.msg_type()))],
        }),
    );
    let mut c = w.client(Duration::from_secs(10));
    c.write("/a", b"1").unwrap();
    let t = Instant::now();
    assert_eq!(c.read("/a"), Err(XsClientError::RingCorrupt));
    assert!(t.elapsed() < Duration::from_secs(2));
    // Fatal: it stays broken.
    assert_eq!(c.write("/a", b"1"), Err(XsClientError::RingCorrupt));
    assert_eq!(c.poll_watch_events(), Err(XsClientError::RingCorrupt));
}

#[test]
fn a_daemon_error_is_an_error() {
    let w = World::new(
        0,
        XENSTORE_SERVER_FEATURE_ERROR,
        Box::new(|_, _| vec![Act::SetError(XENSTORE_ERROR_PROTO)]),
    );
    let mut c = w.client(Duration::from_secs(10));
    let t = Instant::now();
    assert_eq!(
        c.read("/a"),
        Err(XsClientError::ServerError(XENSTORE_ERROR_PROTO))
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(c.failure().is_some());
}

#[test]
fn the_error_field_is_ignored_without_the_feature() {
    let w = World::new(0, 0, kv_daemon());
    w.field(2072).store(XENSTORE_ERROR_PROTO, Ordering::SeqCst);
    let mut c = w.client(Duration::from_secs(10));
    c.write("/a", b"x").unwrap();
    assert_eq!(c.read("/a").unwrap(), b"x");
}

#[test]
fn daemon_destroyed_mid_request_is_an_error_within_the_timeout() {
    // Destroyed with nothing sent, and after half a reply.
    for partial in [0usize, 10] {
        let w = World::new(
            u32::MAX - 3,
            0,
            Box::new(move |m, _| {
                let full = Response::Read(vec![b'x'; 100])
                    .to_message(m.header.req_id, 0)
                    .unwrap()
                    .encode()
                    .unwrap();
                vec![Act::Bytes(full[..partial].to_vec()), Act::DestroySelf]
            }),
        );
        let mut c = w.client(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(
            c.read("/a"),
            Err(XsClientError::PeerGone),
            "partial {partial}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let t = Instant::now();
        assert_eq!(c.read("/a"), Err(XsClientError::PeerGone));
        assert!(t.elapsed() < Duration::from_millis(100));
        assert!(!w.dom0.is_alive());
    }
}

#[test]
fn a_silent_daemon_times_out() {
    let w = World::new(0, 0, Box::new(|_, _| vec![]));
    let mut c = w.client(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(c.read("/a"), Err(XsClientError::Timeout));
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(300) && e < Duration::from_secs(3),
        "{e:?}"
    );
    assert!(c.failure().is_none());
    // Waiting for an event is bounded as well.
    let t = Instant::now();
    assert_eq!(
        c.next_watch_event(None, Duration::from_millis(100)),
        Ok(None)
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[test]
fn guest_initiated_reconnect() {
    let w = World::new(
        500,
        XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR,
        kv_daemon(),
    );
    let mut c = w.client(Duration::from_secs(10));
    c.write("/a", b"1").unwrap();
    c.watch("/ev", "w").unwrap();
    c.transport_mut().reconnect(Duration::from_secs(5)).unwrap();
    c.reset();
    // The daemon reset the queues (to another index) and the client carries on.
    let ix = c.transport().ring().indexes();
    assert_eq!((ix.req_prod, ix.rsp_prod), (500 + 777, 500 + 777));
    assert_eq!(c.read("/a").unwrap(), b"1");
    assert_eq!(c.pending_watch_events(None), 0, "watches forgotten");
    drop(c);
    let mut w = w;
    assert_eq!(w.stop().reconnects, 1);
}

#[test]
fn reconnect_needs_the_feature() {
    let w = World::new(0, 0, kv_daemon());
    let mut t = w.transport();
    assert_eq!(
        t.reconnect(Duration::from_secs(1)),
        Err(xen_store::client::TransportError::Unsupported)
    );
}

#[test]
fn a_reset_started_by_someone_else_is_waited_out() {
    let w = World::new(0, XENSTORE_SERVER_FEATURE_RECONNECTION, kv_daemon());
    // A dom0less toolstack left the ring in "reconnect in progress": connect waits until the
    // daemon completes it, then the client works.
    w.field(2068).store(XENSTORE_RECONNECT, Ordering::SeqCst);
    let mut t = w.transport();
    t.connect(Duration::from_secs(5)).unwrap();
    let mut c = Client::new(t);
    c.write("/b", b"2").unwrap();
    assert_eq!(c.read("/b").unwrap(), b"2");

    // The same in the middle of a session: the next call ends with ConnectionReset (the
    // server forgot the connection's watches and transactions, the client must hear of it),
    // and the client is usable right after — whether the daemon completes the reset before
    // that call looks at the ring (the indexes the guest owns moved behind its back) ...
    w.field(2068).store(XENSTORE_RECONNECT, Ordering::SeqCst);
    let t = Instant::now();
    while w.field(2068).load(Ordering::SeqCst) == XENSTORE_RECONNECT {
        assert!(t.elapsed() < Duration::from_secs(30), "daemon never reset");
        std::thread::yield_now();
    }
    assert_eq!(c.read("/b"), Err(XsClientError::ConnectionReset));
    assert!(c.failure().is_none());
    assert_eq!(c.read("/b").unwrap(), b"2");
    // ... or during it (a race either way: both orders must give the same answer).
    w.field(2068).store(XENSTORE_RECONNECT, Ordering::SeqCst);
    assert_eq!(c.read("/b"), Err(XsClientError::ConnectionReset));
    assert!(c.failure().is_none());
    assert_eq!(c.read("/b").unwrap(), b"2");
}

#[test]
fn a_dead_daemon_never_hangs_a_poll_loop() {
    let w = World::new(0, 0, kv_daemon());
    let mut c = w.client(Duration::from_secs(10));
    assert!(c.event_port().is_some());
    assert_eq!(c.poll_watch_events(), Ok(0));
    w.dom0.destroy().unwrap();
    // Nothing to read and a dead peer: polling says nothing (it never waits) ...
    assert_eq!(c.poll_watch_events(), Ok(0));
    // ... and the next wait says the peer is gone, at once.
    let t = Instant::now();
    assert_eq!(
        c.next_watch_event(None, Duration::from_secs(10)),
        Err(XsClientError::PeerGone)
    );
    assert!(t.elapsed() < Duration::from_secs(1));
}
