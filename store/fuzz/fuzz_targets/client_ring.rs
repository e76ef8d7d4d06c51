//! Fuzz target `client_ring`: the XenStore client facing a hostile daemon over the real ring.
//!
//! The guest side is the real thing: [`Client`] over [`RingTransport`] over [`XsGuestRing`], on a
//! page shared with the daemon's [`XsServerRing`]. The platform under the transport (event
//! channel and clock, [`Events`] + [`Clock`]) is the daemon: single-threaded and deterministic,
//! it takes a step — driven by the input — whenever the client notifies it, clears its pending
//! bit before looking at the ring again, or waits, and the fake clock moves with every step (a wait with a silent daemon runs to its timeout).
//!
//! The input interleaves the client's calls (read, write — up to 3 KiB, so requests wrap the
//! 1 KiB ring —, directory, transactions, watch/unwatch, polling and waiting for watch events,
//! get-domain-path, mkdir/rm, gather, ring reconnection) with the daemon's steps: consume the
//! request stream (or stall), reply to the oldest or any pending request — well-formed, with a
//! wrong `req_id`, `tx_id` or type, as `XS_ERROR` with a real or garbage name, with a garbage
//! payload —, send unsolicited or garbage `XS_WATCH_EVENT`s, raw bytes, a header with an
//! oversized `len`, repeat the last reply, jump `rsp_prod`, `req_cons` or `rsp_cons`, set the
//! `error` field and features, serve (or fake) a reconnection, stop notifying, die.
//!
//! Checked:
//! * no panic;
//! * no hang: every client call returns within a bounded number of daemon steps
//!   ([`STEP_LIMIT`]; each step costs at least one input byte or moves the clock);
//! * replies are matched to their request: a call that succeeded (one request) was answered by a
//!   message the client actually consumed from the ring with that request's `req_id` and type,
//!   whose payload is the value returned (read, directory, transaction id, domain path) — found
//!   in a shadow copy of every response byte the client consumed;
//! * an `XS_ERROR` result was such a message too;
//! * a client that failed fatally stays failed (no request sent) until reset;
//! * every watch event handed out carries a token that was watched.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};
use std::ptr::NonNull;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use xen_store::client::{Client, ClientConfig, Store as _, XsClientError};
use xen_store::platform::abi::xs::{XENSTORE_RECONNECT, XENSTORE_RING_SIZE};
use xen_store::platform::xs_ring::{XsGuestRing, XsIndex, XsServerRing};
use xen_store::platform::{Clock, Error as PlatformError, Events};
use xen_store::transport::RingTransport;
use xen_store::wire::{MsgType, HEADER_LEN, XENSTORE_PAYLOAD_MAX};
use xen_store::{DomId, EvtchnPort, Framer, Message, Request, Response};

/// The guest's port of the xenstore event channel.
const PORT: EvtchnPort = 7;

/// The most daemon steps one client call may take.
const STEP_LIMIT: u64 = 100_000;

/// Every daemon step takes at least this long.
const MIN_STEP: Duration = Duration::from_micros(100);

const TOKENS: [&str; 3] = ["t0", "t1", "t2"];
const PATHS: [&str; 6] = [
    "data",
    "/local/domain/1/device/vbd/51712/state",
    "/a",
    "b/c",
    "@introduceDomain",
    "/",
];
const NAMES: [&str; 6] = ["a", "vbd", "51712", "state", "x-y_z", "0"];
const ERRORS: [&[u8]; 8] = [
    b"ENOENT",
    b"EAGAIN",
    b"E2BIG",
    b"EACCES",
    b"ENOSYS",
    b"EINVAL",
    b"ENOENT\0x",
    b"EWHAT",
];

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.u8()) % (max + 1);
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        self.data[start..end].to_vec()
    }
}

fn frame(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    for w in [ty, req_id, tx_id, payload.len() as u32] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn names(inp: &mut Input<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..inp.u8() % 4 {
        v.extend_from_slice(NAMES[usize::from(inp.u8()) % NAMES.len()].as_bytes());
        v.push(0);
    }
    v
}

/// The daemon side of the page, and the platform (event channel, clock) of the guest side.
struct Daemon<'a> {
    inp: RefCell<Input<'a>>,
    ring: RefCell<XsServerRing>,
    /// What the daemon wrote into `rsp` (the guest never writes there).
    mirror: RefCell<[u8; XENSTORE_RING_SIZE]>,
    /// Bytes queued for `rsp`, written as room allows.
    out: RefCell<VecDeque<u8>>,
    now: Cell<Duration>,
    /// The guest port's pending bit.
    pending: Cell<bool>,
    gone: Cell<bool>,
    /// Steps taken in the current client call.
    steps: Cell<u64>,
    req_framer: RefCell<Framer>,
    /// Requests read and not answered yet.
    requests: RefCell<VecDeque<Message>>,
    last_req_id: Cell<u32>,
    last_reply: RefCell<Vec<u8>>,
    /// Every `rsp` byte the guest consumed, in order.
    shadow: RefCell<Vec<u8>>,
    shadow_cons: Cell<u32>,
}

impl Daemon<'_> {
    /// Record what the guest consumed since the last look (it notifies after every read, so
    /// each look sees one read at most, ≤ 1024 bytes).
    fn catch_up(&self) {
        let cons = self.ring.borrow().indexes().rsp_cons;
        let old = self.shadow_cons.get();
        let n = cons.wrapping_sub(old);
        if n > 0 && n as usize <= XENSTORE_RING_SIZE {
            let m = self.mirror.borrow();
            let mut s = self.shadow.borrow_mut();
            for i in 0..n {
                s.push(m[old.wrapping_add(i) as usize % XENSTORE_RING_SIZE]);
            }
        }
        self.shadow_cons.set(cons);
    }

    fn flush(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut out = self.out.borrow_mut();
        if out.is_empty() {
            return;
        }
        let prod = ring.indexes().rsp_prod;
        let (a, b) = out.as_slices();
        let chunk: Vec<u8> = a
            .iter()
            .chain(b)
            .copied()
            .take(XENSTORE_RING_SIZE)
            .collect();
        if let Ok(n) = ring.write(&chunk) {
            let mut m = self.mirror.borrow_mut();
            for (i, &byte) in chunk[..n].iter().enumerate() {
                m[prod.wrapping_add(i as u32) as usize % XENSTORE_RING_SIZE] = byte;
            }
            out.drain(..n);
        }
    }

    fn send(&self, bytes: Vec<u8>) {
        self.out.borrow_mut().extend(bytes.iter().copied());
        *self.last_reply.borrow_mut() = bytes;
    }

    fn consume(&self) {
        let mut buf = [0u8; XENSTORE_RING_SIZE];
        loop {
            let n = match self.ring.borrow_mut().read(&mut buf) {
                Ok(n) if n > 0 => n,
                _ => return,
            };
            let mut f = self.req_framer.borrow_mut();
            let mut msgs = Vec::new();
            let mut bad = false;
            for item in f.feed(&buf[..n]) {
                match item {
                    Ok(m) => msgs.push(m),
                    Err(_) => bad = true,
                }
            }
            if bad {
                // Out of sync after our own index jumps: start afresh.
                f.reset();
            }
            for m in msgs {
                self.last_req_id.set(m.header.req_id);
                self.requests.borrow_mut().push_back(m);
            }
        }
    }

    /// A reply to `req`, maybe broken as `mutation` says.
    fn reply(&self, inp: &mut Input<'_>, req: &Message, mutation: u8) -> Vec<u8> {
        let (mut ty, mut req_id, mut tx_id) = (req.header.ty, req.header.req_id, req.header.tx_id);
        let b = inp.u8();
        let err = |name: &[u8]| {
            let mut p = name.to_vec();
            p.push(0);
            (MsgType::Error.as_u32(), p)
        };
        let (t, mut payload) = match Request::from_message(req) {
            Ok(Request::Read(_)) if b % 8 == 0 => (ty, vec![b'v'; usize::from(b) * 16]),
            Ok(Request::Read(_)) if b % 8 == 1 => err(b"ENOENT"),
            Ok(Request::Read(_)) => (ty, inp.bytes(32)),
            Ok(Request::Directory(_)) if b % 4 == 0 => err(b"E2BIG"),
            Ok(Request::Directory(_)) => (ty, names(inp)),
            Ok(Request::DirectoryPart { .. }) if b % 8 == 0 => err(b"ENOSYS"),
            Ok(Request::DirectoryPart { .. }) => {
                let mut p = format!("{}\0", b % 3).into_bytes();
                p.extend(names(inp));
                if b & 8 != 0 {
                    p.push(0);
                }
                (ty, p)
            }
            Ok(Request::TransactionStart) => (ty, format!("{}\0", b % 4).into_bytes()),
            Ok(Request::TransactionEnd { .. }) if b % 4 == 0 => err(b"EAGAIN"),
            Ok(Request::GetDomainPath(d)) => (ty, format!("/local/domain/{d}\0").into_bytes()),
            Ok(Request::GetPerms(_)) => (ty, b"n0\0r1\0".to_vec()),
            Ok(Request::IsDomainIntroduced(_)) => (ty, b"T\0".to_vec()),
            _ if b % 16 == 0 => err(b"EACCES"),
            _ => (ty, b"OK\0".to_vec()),
        };
        ty = t;
        match mutation % 16 {
            9 => req_id = req_id.wrapping_add(1),
            10 => req_id = inp.u32(),
            11 => ty = u32::from(inp.u8() % 32),
            12 => tx_id = tx_id.wrapping_add(1 + u32::from(inp.u8())),
            13 => {
                let e = ERRORS[usize::from(inp.u8()) % ERRORS.len()];
                (ty, payload) = err(e);
            }
            14 => {
                ty = MsgType::Error.as_u32();
                payload = inp.bytes(24);
            }
            15 => payload = inp.bytes(64),
            _ => {}
        }
        frame(ty, req_id, tx_id, &payload)
    }

    fn jump(&self, inp: &mut Input<'_>, which: XsIndex) {
        let mut ring = self.ring.borrow_mut();
        let ix = ring.indexes();
        let cur = match which {
            XsIndex::ReqCons => ix.req_cons,
            XsIndex::ReqProd => ix.req_prod,
            XsIndex::RspCons => ix.rsp_cons,
            XsIndex::RspProd => ix.rsp_prod,
        };
        let b = inp.u8();
        let small = u32::from(b >> 2) + 1;
        let v = match b % 4 {
            0 => cur.wrapping_add(small),
            1 => cur.wrapping_sub(small),
            2 => cur.wrapping_add(XENSTORE_RING_SIZE as u32 + 1),
            _ => inp.u32(),
        };
        ring.store_index_unchecked(which, v);
    }

    /// One step of the daemon; `false` if it had nothing to do (input exhausted).
    fn step(&self) -> bool {
        let s = self.steps.get() + 1;
        self.steps.set(s);
        assert!(
            s <= STEP_LIMIT,
            "a client call is still running after {s} daemon steps"
        );
        self.catch_up();
        self.now.set(self.now.get() + MIN_STEP);
        let mut inp = self.inp.borrow_mut();
        if inp.done() {
            return false;
        }
        let op = inp.u8();
        let extra = u64::from(op >> 5);
        self.now
            .set(self.now.get() + Duration::from_micros(extra * extra * extra * 100));
        let act = op & 15;
        if act != 12 {
            self.consume();
        }
        match act {
            0..=3 => {
                let mutation = inp.u8();
                let idx = if act == 3 { usize::from(inp.u8()) } else { 0 };
                let req = {
                    let mut q = self.requests.borrow_mut();
                    if q.is_empty() {
                        None
                    } else {
                        let i = idx % q.len();
                        q.remove(i)
                    }
                };
                let bytes = match req {
                    Some(req) => self.reply(&mut inp, &req, mutation),
                    // Nothing asked: a reply anyway, to the last or next request id.
                    None => frame(
                        u32::from(mutation % 32),
                        self.last_req_id
                            .get()
                            .wrapping_add(u32::from(mutation >> 7)),
                        0,
                        b"OK\0",
                    ),
                };
                self.send(bytes);
            }
            4 => {
                let b = inp.u8();
                let payload = match b % 4 {
                    0 => inp.bytes(64),
                    _ => {
                        let mut p = PATHS[usize::from(b >> 2) % PATHS.len()].as_bytes().to_vec();
                        p.push(0);
                        match b % 4 {
                            1 => p.extend_from_slice(TOKENS[usize::from(b >> 5) % 3].as_bytes()),
                            2 => p.extend_from_slice(b"stranger"),
                            _ => p.extend(inp.bytes(8)),
                        }
                        p.push(0);
                        p
                    }
                };
                let req_id = if b & 0x80 != 0 { inp.u32() } else { 0 };
                self.send(frame(MsgType::WatchEvent.as_u32(), req_id, 0, &payload));
            }
            5 => {
                let bytes = inp.bytes(64);
                self.send(bytes);
            }
            6 => {
                let len = XENSTORE_PAYLOAD_MAX as u32 + 1 + u32::from(inp.u8()) * 1000;
                let mut v = frame(u32::from(inp.u8() % 32), self.last_req_id.get(), 0, &[]);
                v[12..16].copy_from_slice(&len.to_le_bytes());
                self.send(v);
            }
            7 => self.jump(&mut inp, XsIndex::RspProd),
            8 => self.jump(&mut inp, XsIndex::ReqCons),
            9 => self.jump(&mut inp, XsIndex::RspCons),
            10 => {
                let b = inp.u8();
                let mut ring = self.ring.borrow_mut();
                ring.set_error(u32::from(b % 4));
                ring.add_server_features(u32::from(b >> 2) & 3);
            }
            11 => {
                let b = inp.u8();
                let mut ring = self.ring.borrow_mut();
                if ring.connection() == XENSTORE_RECONNECT || b & 1 == 1 {
                    // Serve a reconnection (or reset the ring unasked).
                    let start = if b & 2 == 0 { 0 } else { inp.u32() };
                    ring.reset(start);
                    ring.set_connected();
                    self.requests.borrow_mut().clear();
                    self.req_framer.borrow_mut().reset();
                    self.out.borrow_mut().clear();
                }
            }
            12 | 13 => {}
            14 => {
                let last = self.last_reply.borrow().clone();
                self.out.borrow_mut().extend(last);
            }
            _ => {
                if inp.u8() < 8 {
                    self.gone.set(true);
                }
            }
        }
        drop(inp);
        self.flush();
        self.shadow_cons.set(self.ring.borrow().indexes().rsp_cons);
        if op & 16 == 0 {
            self.pending.set(true);
        }
        true
    }

    /// Payloads of the messages with `req_id` and type `ty` in what the guest consumed.
    fn consumed(&self, req_id: u32, ty: MsgType) -> Vec<Vec<u8>> {
        let s = self.shadow.borrow();
        let mut found = Vec::new();
        let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        let mut i = 0;
        while i + HEADER_LEN <= s.len() {
            if word(i + 4) == req_id && word(i) == ty.as_u32() {
                let len = word(i + 12) as usize;
                if len <= XENSTORE_PAYLOAD_MAX && i + HEADER_LEN + len <= s.len() {
                    found.push(s[i + HEADER_LEN..i + HEADER_LEN + len].to_vec());
                }
            }
            i += 1;
        }
        found
    }
}

impl Clock for Daemon<'_> {
    fn now(&self) -> Duration {
        self.now.get()
    }
}

impl Events for Daemon<'_> {
    fn alloc_unbound(&self, _remote: DomId) -> Result<EvtchnPort, PlatformError> {
        Err(PlatformError::Unsupported)
    }
    fn bind_interdomain(
        &self,
        _remote: DomId,
        _remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, PlatformError> {
        Err(PlatformError::Unsupported)
    }
    fn notify(&self, port: EvtchnPort) -> Result<(), PlatformError> {
        assert_eq!(port, PORT);
        self.catch_up();
        if self.gone.get() {
            return Err(PlatformError::PeerGone);
        }
        self.step();
        Ok(())
    }
    fn close(&self, _port: EvtchnPort) -> Result<(), PlatformError> {
        Ok(())
    }
    fn mask(&self, _port: EvtchnPort) -> Result<(), PlatformError> {
        Ok(())
    }
    fn unmask(&self, _port: EvtchnPort) -> Result<(), PlatformError> {
        Ok(())
    }
    fn is_pending(&self, _port: EvtchnPort) -> bool {
        self.pending.get()
    }
    fn clear(&self, _port: EvtchnPort) -> bool {
        let was = self.pending.replace(false);
        // The daemon runs concurrently: let it act between the guest's looks at the ring.
        if !self.gone.get() {
            self.step();
        }
        was
    }
    fn wait(
        &self,
        ports: &[EvtchnPort],
        timeout: Option<Duration>,
    ) -> Result<EvtchnPort, PlatformError> {
        assert_eq!(ports, [PORT]);
        let deadline = self
            .now
            .get()
            .saturating_add(timeout.expect("the transport always bounds its waits"));
        loop {
            if self.gone.get() {
                return Err(PlatformError::PeerGone);
            }
            if self.pending.get() {
                return Ok(PORT);
            }
            if self.now.get() >= deadline {
                return Err(PlatformError::Timeout);
            }
            if !self.step() {
                // A silent daemon: the wait runs out.
                self.now.set(self.now.get().max(deadline));
            }
        }
    }
}

/// A page-aligned, zeroed page, freed on drop.
struct Page(NonNull<u8>);

const PAGE: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("page layout"),
};

impl Page {
    fn new() -> Page {
        // SAFETY: PAGE has a non-zero size.
        let p = unsafe { alloc_zeroed(PAGE) };
        Page(NonNull::new(p).expect("out of memory"))
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: allocated in Page::new with PAGE, freed once; every ring wrapper on it was
        // dropped before (declared after the page, hence dropped first).
        unsafe { dealloc(self.0.as_ptr(), PAGE) };
    }
}

type XsResult<T> = core::result::Result<T, XsClientError>;

/// Check a finished call: steps bounded (done in `step`), and for one request that succeeded
/// or failed with `XS_ERROR`, the reply the client took is in what it consumed.
fn check_reply<T>(
    d: &Daemon<'_>,
    req_id: u32,
    sent: u64,
    ty: MsgType,
    r: &XsResult<T>,
    payload_ok: impl Fn(&T, &[u8]) -> bool,
) {
    if sent != 1 {
        return;
    }
    match r {
        Ok(v) => {
            let found = d.consumed(req_id, ty);
            assert!(
                found.iter().any(|p| payload_ok(v, p)),
                "{ty:?} request {req_id} succeeded without its reply in the ring: {found:?}"
            );
        }
        Err(XsClientError::Xs(e)) => {
            let found = d.consumed(req_id, MsgType::Error);
            let want = format!("{}\0", e.as_str()).into_bytes();
            assert!(
                found.contains(&want),
                "{ty:?} request {req_id} failed with {e} without such a reply: {found:?}"
            );
        }
        Err(_) => {}
    }
}

fn decodes_to(ty: MsgType, p: &[u8], want: &Response) -> bool {
    Response::decode(ty, p).as_ref() == Ok(want)
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input { data, pos: 0 };
    let features = u32::from(inp.u8() & 3);
    let start = match inp.u8() % 4 {
        0 => 0,
        1 => 0xffff_fc00,
        2 => inp.u32(),
        _ => 1000,
    };
    let page = Page::new();
    // SAFETY: a live, page-aligned page of 4096 bytes (≥ 2076), freed only after both ring
    // wrappers are gone (`page` outlives them); one guest-side and one daemon-side wrapper,
    // used from this one thread; no Rust reference to the page exists.
    let mut server = unsafe { XsServerRing::new(page.0) }.expect("aligned");
    server.reset(start);
    server.add_server_features(features);
    // SAFETY: as above.
    let guest = unsafe { XsGuestRing::new(page.0) }.expect("aligned");
    let d = Daemon {
        inp: RefCell::new(inp),
        ring: RefCell::new(server),
        mirror: RefCell::new([0; XENSTORE_RING_SIZE]),
        out: RefCell::default(),
        now: Cell::new(Duration::ZERO),
        pending: Cell::new(false),
        gone: Cell::new(false),
        steps: Cell::new(0),
        req_framer: RefCell::default(),
        requests: RefCell::default(),
        last_req_id: Cell::new(0),
        last_reply: RefCell::default(),
        shadow: RefCell::default(),
        shadow_cons: Cell::new(start),
    };
    let timeout = Duration::from_millis(20);
    let mut c = Client::with_config(
        RingTransport::new(guest, &d, PORT),
        ClientConfig {
            timeout,
            tx_retries: 3,
            watch_queue_len: 4,
        },
    );
    let mut watched: BTreeSet<&str> = BTreeSet::new();
    let mut calls = 0;
    loop {
        let (op, a, b) = {
            let mut inp = d.inp.borrow_mut();
            if inp.done() || calls >= 200 {
                break;
            }
            (inp.u8(), inp.u8(), inp.u8())
        };
        calls += 1;
        d.steps.set(0);
        let dead = c.failure().cloned();
        let before = c.stats().requests_sent;
        let path = PATHS[usize::from(a) % 4];
        let token = TOKENS[usize::from(b) % TOKENS.len()];
        let req_id = before.wrapping_add(1) as u32;
        // What the call did: (request type, result without the value) for the checks below.
        let outcome: XsResult<()> = match op % 16 {
            0 => {
                let r = c.read(path);
                let sent = c.stats().requests_sent - before;
                check_reply(&d, req_id, sent, MsgType::Read, &r, |v, p| v == p);
                r.map(drop)
            }
            1 => {
                let value = if b & 1 == 0 {
                    vec![b'w'; usize::from(b) * 12]
                } else {
                    vec![b]
                };
                let r = c.write(path, &value);
                let sent = c.stats().requests_sent - before;
                check_reply(&d, req_id, sent, MsgType::Write, &r, |_, _| true);
                r
            }
            2 => {
                let r = c.directory(path);
                let sent = c.stats().requests_sent - before;
                check_reply(&d, req_id, sent, MsgType::Directory, &r, |v, p| {
                    decodes_to(MsgType::Directory, p, &Response::Directory(v.clone()))
                });
                r.map(drop)
            }
            3 => c.transact(|tx| {
                let v = tx.try_read("a")?;
                tx.write("b", &v.unwrap_or_default())?;
                Ok(())
            }),
            4 => {
                watched.insert(token);
                let wpath = PATHS[usize::from(a) % PATHS.len()];
                let r = c.watch(wpath, token);
                let sent = c.stats().requests_sent - before;
                check_reply(&d, req_id, sent, MsgType::Watch, &r, |_, _| true);
                r
            }
            5 => {
                let wpath = PATHS[usize::from(a) % PATHS.len()];
                let r = c.unwatch(wpath, token);
                let sent = c.stats().requests_sent - before;
                check_reply(&d, req_id, sent, MsgType::Unwatch, &r, |_, _| true);
                r
            }
            6 => c.poll_watch_events().map(drop),
            7 => {
                let wait = Duration::from_millis(u64::from(a % 32));
                match c.next_watch_event(Some(token), wait) {
                    Ok(Some(ev)) => {
                        assert_eq!(ev.token, token, "an event for another token");
                        Ok(())
                    }
                    other => other.map(drop),
                }
            }
            8 => {
                let domid = DomId::from(a);
                let r = c.get_domain_path(domid);
                let sent = c.stats().requests_sent - before;
                check_reply(&d, req_id, sent, MsgType::GetDomainPath, &r, |v, p| {
                    decodes_to(
                        MsgType::GetDomainPath,
                        p,
                        &Response::GetDomainPath(v.clone()),
                    )
                });
                r.map(drop)
            }
            9 => {
                let (r, ty) = if b & 1 == 0 {
                    (c.mkdir(path), MsgType::Mkdir)
                } else {
                    (c.rm(path), MsgType::Rm)
                };
                let sent = c.stats().requests_sent - before;
                check_reply(&d, req_id, sent, ty, &r, |_, _| true);
                r
            }
            10 => match c.transaction_start() {
                Ok(mut tx) => {
                    let id = tx.id();
                    let found = d.consumed(req_id, MsgType::TransactionStart);
                    assert!(
                        found.iter().any(|p| decodes_to(
                            MsgType::TransactionStart,
                            p,
                            &Response::TransactionStart(id)
                        )),
                        "transaction {id} started without its reply: {found:?}"
                    );
                    assert_ne!(id, 0, "transaction id 0 accepted");
                    let r = tx.read(path).map(drop);
                    if b & 1 == 0 {
                        let _ = tx.abort();
                    } // else: dropped, which aborts
                    r
                }
                Err(e) => Err(e),
            },
            11 => {
                let r = c.transport_mut().reconnect(timeout);
                c.reset();
                watched.clear();
                r.map_err(XsClientError::from)
            }
            12 => {
                for _ in 0..a % 8 {
                    d.step();
                }
                Ok(())
            }
            13 => c.gather_atomic("dir", &["k1", "k2"]).map(drop),
            14 => {
                c.reset();
                watched.clear();
                Ok(())
            }
            _ => c.read_u32(path).map(drop),
        };
        if let Some(e) = dead {
            // (Events queued before the failure are still handed out by `next_watch_event`.)
            if !matches!(op % 16, 7 | 11 | 12 | 14) {
                assert_eq!(
                    c.stats().requests_sent,
                    before,
                    "a dead client ({e}) sent a request"
                );
                assert!(outcome.is_err(), "a dead client ({e}) succeeded");
            }
        }
        while let Some(ev) = c.take_watch_event(None) {
            assert!(
                watched.contains(ev.token.as_str()),
                "event for token {:?} that was never watched",
                ev.token
            );
        }
    }
    drop(c);
});
