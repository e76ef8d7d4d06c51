//! The XenStore conformance suite: one set of cases, run against any [`Peer`].
//!
//! Two peers run it: Debian's real C xenstored 4.17 ([`crate::real::RealXenstored`]; dom0
//! over its Unix socket, domUs over real shared ring pages) and our own xenstored
//! ([`crate::ours::OurXenstored`], `xen_store::server`; dom0 on a Unix socket, domUs on
//! simulator rings).
//! **These cases define the behaviour our server must match**: every expectation below was
//! observed on the real daemon. Where our server is meant to differ, the case says so in a
//! comment and the expectation is the real daemon's.
//!
//! Each case is a `pub fn(&dyn Peer)` that panics with a message naming the step that went
//! wrong. A case expects a *fresh* peer (its own store: the real daemon's initial tree is just
//! `/tool/xenstored`), because watches on `@introduceDomain`/`@releaseDomain` see every domain.
//! [`CASES`] run on a peer with default quotas, [`QUOTA_CASES`] on one started with
//! [`Limits::SMALL`].
//!
//! Things the real 4.17 daemon does that the suite deliberately does *not* exercise:
//! * a request whose string argument is not NUL-terminated, or has bytes after its last NUL
//!   (e.g. `READ "/x\0junk"`), can make the daemon abort on
//!   `xenstored_core.c: consider_message: Assertion 'conn->in == NULL' failed` — it reads past
//!   the payload, so the outcome depends on memory contents. Our server answers `EINVAL`.
//! * numbers parsed with `atoi()` (`GET_DOMAIN_PATH "abc"` answers `/local/domain/0`), extra
//!   strings ignored (`READ "/x\0/y\0"` reads `/x`): our codec is strict (`EINVAL`), a
//!   documented difference (see `xen_store::server`).

use std::time::Duration;

use xen_store::client::{Client, Store, Transport, WatchEvent, XsClientError};
use xen_store::perms::{Access, Perm, Perms};
use xen_store::wire::{Header, Message, MsgType};
use xen_store::{DomId, Framer, Request, Response, XsError};

/// A client of a peer: over a Unix socket (dom0) or a ring page (domU), boxed.
pub type PeerClient = Client<Box<dyn Transport + Send>>;

/// The quotas a peer enforces on unprivileged domains (xenstored's option letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `-E`: nodes a domain may own.
    pub nodes: usize,
    /// `-W`: watches per domain connection.
    pub watches: usize,
    /// `-t`: open transactions per domain connection.
    pub transactions: usize,
    /// `-S`: accounted node size (24 + 8 × perms + value + child names with NULs).
    pub node_size: usize,
}

impl Limits {
    /// xenstored 4.17's defaults (`quota_nb_entry_per_domain` 1000,
    /// `quota_nb_watch_per_domain` 128, `quota_max_transaction` 10, `quota_max_entry_size`
    /// 2048).
    pub const DEFAULT: Limits = Limits {
        nodes: 1000,
        watches: 128,
        transactions: 10,
        node_size: 2048,
    };

    /// Small quotas for [`QUOTA_CASES`]: `-E 6 -W 2 -t 2 -S 64`.
    pub const SMALL: Limits = Limits {
        nodes: 6,
        watches: 2,
        transactions: 2,
        node_size: 64,
    };

    /// The xenstored command-line options (empty for the defaults).
    pub fn xenstored_args(&self) -> String {
        if *self == Limits::DEFAULT {
            return String::new();
        }
        format!(
            "-E {} -W {} -t {} -S {}",
            self.nodes, self.watches, self.transactions, self.node_size
        )
    }
}

/// A XenStore server the suite can talk to.
///
/// An in-process server implements it with a Unix socket (or any [`Transport`]) for
/// [`dom0`](Self::dom0) and a simulator ring for [`domu`](Self::domu)
/// ([`crate::OwnedRing`] over a `xen_sim::Domain` fits).
pub trait Peer {
    /// For messages: which server this is.
    fn name(&self) -> &str;

    /// A new privileged connection (a dom0 tool on the socket). Each call is a new
    /// connection, with its own watches and transactions.
    fn dom0(&self) -> PeerClient;

    /// Make domain `domid` exist, introduce it as the toolstack does (`XS_INTRODUCE` from
    /// dom0, which fires `@introduceDomain`), and return its (unprivileged) ring connection.
    /// It writes no nodes: the cases do the toolstack's part through [`Peer::dom0`]
    /// ([`make_domain`]).
    fn domu(&self, domid: DomId) -> PeerClient;

    /// The domain dies (the hypervisor says "dying" and raises `VIRQ_DOM_EXC`): the server
    /// fires `@releaseDomain` and removes the nodes the domain owned.
    fn kill_domain(&self, domid: DomId);

    /// The quotas it was started with.
    fn limits(&self) -> Limits;
}

/// A case: panics (with the step that failed) if the peer does not behave.
pub type Case = fn(&dyn Peer);

/// Every case for a peer with [`Limits::DEFAULT`], by name.
pub const CASES: &[(&str, Case)] = &[
    ("initial_tree", initial_tree),
    ("read_write_basics", read_write_basics),
    ("write_creates_parents", write_creates_parents),
    ("mkdir_semantics", mkdir_semantics),
    ("rm_semantics", rm_semantics),
    ("directory_listing", directory_listing),
    ("directory_too_big", directory_too_big),
    ("domain_introduction", domain_introduction),
    (
        "perms_defaults_and_inheritance",
        perms_defaults_and_inheritance,
    ),
    ("perms_domu_read_denied", perms_domu_read_denied),
    ("perms_domu_write_denied", perms_domu_write_denied),
    ("perms_set_perms_rules", perms_set_perms_rules),
    ("perms_acl_grants", perms_acl_grants),
    ("domu_privileged_ops_denied", domu_privileged_ops_denied),
    ("relative_paths", relative_paths),
    ("tx_isolation", tx_isolation),
    ("tx_conflict_eagain", tx_conflict_eagain),
    ("tx_abort", tx_abort),
    ("tx_bad_id", tx_bad_id),
    ("tx_domu", tx_domu),
    ("watch_initial_event", watch_initial_event),
    ("watch_child_events", watch_child_events),
    (
        "watch_rm_fires_descendant_watches",
        watch_rm_fires_descendant_watches,
    ),
    ("watch_relative_paths", watch_relative_paths),
    ("watch_duplicate_and_unwatch", watch_duplicate_and_unwatch),
    (
        "watch_events_filtered_by_perms",
        watch_events_filtered_by_perms,
    ),
    ("watch_introduce_domain", watch_introduce_domain),
    (
        "watch_release_domain_on_death",
        watch_release_domain_on_death,
    ),
    (
        "watch_release_domain_on_release",
        watch_release_domain_on_release,
    ),
    ("malformed_paths", malformed_paths),
    ("malformed_payloads", malformed_payloads),
    ("unknown_message_type", unknown_message_type),
    (
        "oversized_message_drops_connection",
        oversized_message_drops_connection,
    ),
];

/// Every case for a peer with [`Limits::SMALL`], by name.
pub const QUOTA_CASES: &[(&str, Case)] = &[
    ("quota_nodes", quota_nodes),
    ("quota_watches", quota_watches),
    ("quota_transactions", quota_transactions),
    ("quota_node_size", quota_node_size),
    ("quota_dom0_exempt", quota_dom0_exempt),
];

/// One `#[test]` per case of [`CASES`] and [`QUOTA_CASES`], each calling
/// `$run(name: &str, limits: Limits, case: Case)`, plus a test that every case of the suite has
/// a test. A test file against a peer is its `run` function and `conformance_tests!(run);`.
#[macro_export]
macro_rules! conformance_tests {
    ($run:ident) => {
        $crate::conformance_tests!(@emit $run, DEFAULT_TESTS, $crate::conformance::Limits::DEFAULT =>
            initial_tree,
            read_write_basics,
            write_creates_parents,
            mkdir_semantics,
            rm_semantics,
            directory_listing,
            directory_too_big,
            domain_introduction,
            perms_defaults_and_inheritance,
            perms_domu_read_denied,
            perms_domu_write_denied,
            perms_set_perms_rules,
            perms_acl_grants,
            domu_privileged_ops_denied,
            relative_paths,
            tx_isolation,
            tx_conflict_eagain,
            tx_abort,
            tx_bad_id,
            tx_domu,
            watch_initial_event,
            watch_child_events,
            watch_rm_fires_descendant_watches,
            watch_relative_paths,
            watch_duplicate_and_unwatch,
            watch_events_filtered_by_perms,
            watch_introduce_domain,
            watch_release_domain_on_death,
            watch_release_domain_on_release,
            malformed_paths,
            malformed_payloads,
            unknown_message_type,
            oversized_message_drops_connection,
        );
        $crate::conformance_tests!(@emit $run, QUOTA_TESTS, $crate::conformance::Limits::SMALL =>
            quota_nodes,
            quota_watches,
            quota_transactions,
            quota_node_size,
            quota_dom0_exempt,
        );

        /// Every case of the suite has a test here (and nothing else does).
        #[test]
        fn every_case_has_a_test() {
            let names = |v: &[(&'static str, $crate::conformance::Case)]| -> Vec<&'static str> {
                let mut n: Vec<&str> = v.iter().map(|(n, _)| *n).collect();
                n.sort_unstable();
                n
            };
            let sorted = |v: &[&'static str]| {
                let mut n = v.to_vec();
                n.sort_unstable();
                n
            };
            assert_eq!(names($crate::conformance::CASES), sorted(DEFAULT_TESTS));
            assert_eq!(names($crate::conformance::QUOTA_CASES), sorted(QUOTA_TESTS));
        }
    };
    (@emit $run:ident, $list:ident, $limits:expr => $($name:ident),* $(,)?) => {
        const $list: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                $run(stringify!($name), $limits, $crate::conformance::$name);
            }
        )*
    };
}

/// How long an expected watch event may take.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers.

#[track_caller]
fn ok<T>(r: Result<T, XsClientError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e} ({e:?})"),
    }
}

#[track_caller]
fn fails<T: std::fmt::Debug>(r: Result<T, XsClientError>, want: XsError, what: &str) {
    match r {
        Err(XsClientError::Xs(e)) if e == want => {}
        other => panic!("{what}: expected {want}, got {other:?}"),
    }
}

#[track_caller]
fn read_str<S: Store + ?Sized>(c: &mut S, path: &str) -> String {
    let v = ok(c.read(path), &format!("read {path}"));
    String::from_utf8(v).unwrap_or_else(|e| panic!("read {path}: not UTF-8: {e}"))
}

#[track_caller]
fn perms(entries: &[(Access, DomId)]) -> Perms {
    Perms::from_vec(entries.iter().map(|&(a, d)| Perm::new(a, d)).collect())
        .expect("valid permission list")
}

#[track_caller]
fn perms_str<S: Store + ?Sized>(c: &mut S, path: &str) -> String {
    let p = ok(c.get_perms(path), &format!("get_perms {path}"));
    p.entries()
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A round trip on `c`: every event the server queued for `c` before it handled this request
/// has been received (and queued by the client) when it returns.
#[track_caller]
fn sync(c: &mut PeerClient) {
    ok(
        c.request(0, &Request::GetDomainPath(0)).map(|_| ()),
        "sync (GET_DOMAIN_PATH)",
    );
}

#[track_caller]
fn next_event(c: &mut PeerClient, token: Option<&str>, what: &str) -> WatchEvent {
    match c.next_watch_event(token, EVENT_TIMEOUT) {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("{what}: no watch event (token {token:?}) within {EVENT_TIMEOUT:?}"),
        Err(e) => panic!("{what}: waiting for a watch event: {e:?}"),
    }
}

#[track_caller]
fn expect_event(c: &mut PeerClient, token: &str, path: &str, what: &str) {
    let ev = next_event(c, Some(token), what);
    assert_eq!(ev.path.as_str(), path, "{what}: event path (token {token})");
}

/// All events queued for `token` (after a [`sync`]), in order.
#[track_caller]
fn drain_events(c: &mut PeerClient, token: Option<&str>) -> Vec<String> {
    sync(c);
    let mut v = Vec::new();
    while let Some(ev) = c.take_watch_event(token) {
        v.push(match token {
            Some(_) => ev.path.as_str().to_string(),
            None => format!("{} {}", ev.token, ev.path),
        });
    }
    v
}

#[track_caller]
fn expect_no_event(c: &mut PeerClient, token: &str, what: &str) {
    let v = drain_events(c, Some(token));
    assert!(v.is_empty(), "{what}: unexpected events for {token}: {v:?}");
}

fn home(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// Introduce `domid` and lay out its home as libxl does (XENSTORE-LAYOUT.md): the home
/// `/local/domain/N` owned by dom0 and readable by the guest `(n0,rN)`, and `data` owned by
/// the guest `(nN)`. Returns the domain's connection.
pub fn make_domain(p: &dyn Peer, dom0: &mut PeerClient, domid: DomId) -> PeerClient {
    let c = p.domu(domid);
    let h = home(domid);
    ok(dom0.mkdir(&h), "toolstack: mkdir home");
    ok(
        dom0.set_perms(&h, &perms(&[(Access::None, 0), (Access::Read, domid)])),
        "toolstack: home perms (n0,rN)",
    );
    ok(dom0.mkdir(&format!("{h}/data")), "toolstack: mkdir data");
    ok(
        dom0.set_perms(&format!("{h}/data"), &perms(&[(Access::None, domid)])),
        "toolstack: data perms (nN)",
    );
    c
}

static RAW_REQ_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0x5eed_0000);

/// Send one raw message (any type, any payload, a `len` that may lie) on `c`'s transport and
/// return the reply with its `req_id`. Use it on a connection with no watches (events are
/// skipped, but bytes the client itself buffered are not seen).
pub fn raw_request(
    c: &mut PeerClient,
    ty: u32,
    tx_id: u32,
    payload: &[u8],
    len: Option<u32>,
) -> Result<Message, XsClientError> {
    let req_id = RAW_REQ_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let len = len.unwrap_or(payload.len() as u32);
    let mut bytes = Header {
        ty,
        req_id,
        tx_id,
        len,
    }
    .encode()
    .to_vec();
    bytes.extend_from_slice(payload);
    let t = c.transport_mut();
    t.send(&bytes, EVENT_TIMEOUT)?;
    let deadline = t.now() + EVENT_TIMEOUT;
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let remaining = deadline.saturating_sub(t.now());
        if remaining.is_zero() {
            return Err(XsClientError::Timeout);
        }
        let n = t.recv(&mut buf, remaining)?;
        let mut input = &buf[..n];
        while !input.is_empty() {
            let (used, m) = framer.push(input).map_err(|e| {
                XsClientError::Protocol(xen_store::client::ProtocolError::Framing(e))
            })?;
            input = &input[used..];
            if let Some(m) = m {
                if m.header.req_id == req_id && m.header.ty != MsgType::WatchEvent.as_u32() {
                    return Ok(m);
                }
            }
        }
    }
}

/// The error name of an `XS_ERROR` reply (`None` for any other reply).
fn error_name(m: &Message) -> Option<String> {
    if m.header.ty != MsgType::Error.as_u32() {
        return None;
    }
    let s = m.payload.strip_suffix(b"\0").unwrap_or(&m.payload);
    Some(String::from_utf8_lossy(s).into_owned())
}

#[track_caller]
fn raw_error(c: &mut PeerClient, ty: u32, payload: &[u8], what: &str) -> String {
    let m = ok(raw_request(c, ty, 0, payload, None), what);
    error_name(&m).unwrap_or_else(|| {
        panic!(
            "{what}: expected an XS_ERROR reply, got type {} payload {:?}",
            m.header.ty,
            String::from_utf8_lossy(&m.payload)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Basics.

/// A fresh store holds `/tool/xenstored` (empty, `n0`) and nothing else; `/local` does not
/// exist until a toolstack writes it.
pub fn initial_tree(p: &dyn Peer) {
    let mut c = p.dom0();
    assert_eq!(
        ok(c.directory("/"), "directory /"),
        ["tool"],
        "children of /"
    );
    assert_eq!(ok(c.directory("/tool"), "directory /tool"), ["xenstored"]);
    assert_eq!(read_str(&mut c, "/tool/xenstored"), "");
    assert_eq!(perms_str(&mut c, "/"), "n0");
    assert_eq!(perms_str(&mut c, "/tool/xenstored"), "n0");
    fails(c.read("/local"), XsError::Enoent, "read /local");
    // The root's value is an ordinary (empty) value.
    assert_eq!(read_str(&mut c, "/"), "");
}

/// Values are raw bytes: overwrite, empty, embedded NULs, the largest that fits a message;
/// a missing node is `ENOENT`; another connection sees the value.
pub fn read_write_basics(p: &dyn Peer) {
    let mut a = p.dom0();
    let mut b = p.dom0();
    ok(a.write("/rw/k", b"v1"), "write v1");
    assert_eq!(read_str(&mut a, "/rw/k"), "v1");
    ok(a.write("/rw/k", b"v2"), "overwrite");
    assert_eq!(
        read_str(&mut b, "/rw/k"),
        "v2",
        "seen by another connection"
    );
    ok(a.write("/rw/k", b""), "write empty");
    assert_eq!(ok(a.read("/rw/k"), "read empty"), b"");
    let bin = b"a\0b\xff\n\0".to_vec();
    ok(a.write("/rw/bin", &bin), "write binary");
    assert_eq!(ok(b.read("/rw/bin"), "read binary"), bin);
    // The whole payload is path + NUL + value <= 4096.
    let path = "/rw/big";
    let big = vec![b'x'; 4096 - path.len() - 1];
    ok(a.write(path, &big), "write largest value");
    assert_eq!(ok(b.read(path), "read largest value"), big);
    fails(a.read("/rw/missing"), XsError::Enoent, "read missing");
    fails(
        a.read("/rw/missing/deeper"),
        XsError::Enoent,
        "read under missing",
    );
    fails(
        a.read("/nothing"),
        XsError::Enoent,
        "read missing top level",
    );
}

/// `WRITE` creates missing parents with empty values.
pub fn write_creates_parents(p: &dyn Peer) {
    let mut c = p.dom0();
    ok(c.write("/wp/a/b/c", b"leaf"), "write deep");
    assert_eq!(read_str(&mut c, "/wp/a"), "");
    assert_eq!(read_str(&mut c, "/wp/a/b"), "");
    assert_eq!(read_str(&mut c, "/wp/a/b/c"), "leaf");
    assert_eq!(ok(c.directory("/wp/a"), "dir"), ["b"]);
    assert_eq!(ok(c.directory("/wp/a/b"), "dir"), ["c"]);
    assert_eq!(perms_str(&mut c, "/wp/a/b"), "n0", "implicit parent perms");
}

/// `MKDIR` creates an empty node (and parents) and keeps an existing node's value.
pub fn mkdir_semantics(p: &dyn Peer) {
    let mut c = p.dom0();
    ok(c.mkdir("/mk/new"), "mkdir new");
    assert_eq!(read_str(&mut c, "/mk/new"), "");
    ok(c.write("/mk/v", b"keep"), "write");
    ok(c.mkdir("/mk/v"), "mkdir existing");
    assert_eq!(read_str(&mut c, "/mk/v"), "keep", "mkdir keeps the value");
    ok(c.mkdir("/mk/x/y/z"), "mkdir deep");
    assert_eq!(read_str(&mut c, "/mk/x/y"), "");
    assert_eq!(ok(c.directory("/mk/x/y"), "dir"), ["z"]);
}

/// `RM` removes a subtree; a missing node whose parent exists is fine, a missing parent is
/// `ENOENT`; the root cannot be removed (`EINVAL`).
pub fn rm_semantics(p: &dyn Peer) {
    let mut c = p.dom0();
    ok(c.write("/rm/a/b/c", b"1"), "write");
    ok(c.write("/rm/a/d", b"2"), "write");
    ok(c.write("/rm/keep", b"3"), "write");
    ok(c.rm("/rm/a"), "rm subtree");
    for gone in ["/rm/a", "/rm/a/b", "/rm/a/b/c", "/rm/a/d"] {
        fails(c.read(gone), XsError::Enoent, &format!("{gone} after rm"));
    }
    assert_eq!(ok(c.directory("/rm"), "dir"), ["keep"]);
    ok(c.rm("/rm/zz"), "rm missing node of an existing parent");
    fails(
        c.rm("/rm/zz/yy"),
        XsError::Enoent,
        "rm under a missing parent",
    );
    fails(c.rm("/"), XsError::Einval, "rm /");
    assert_eq!(read_str(&mut c, "/rm/keep"), "3");
}

/// `DIRECTORY` lists children in creation order (a re-created child goes last); a leaf has
/// none; a missing node is `ENOENT`.
pub fn directory_listing(p: &dyn Peer) {
    let mut c = p.dom0();
    for k in ["b", "a", "c"] {
        ok(c.write(&format!("/dl/{k}"), b""), "write");
    }
    assert_eq!(
        ok(c.directory("/dl"), "dir"),
        ["b", "a", "c"],
        "creation order"
    );
    ok(c.rm("/dl/b"), "rm");
    ok(c.write("/dl/b", b""), "re-create");
    assert_eq!(
        ok(c.directory("/dl"), "dir"),
        ["a", "c", "b"],
        "re-created goes last"
    );
    ok(c.write("/dl/a", b"changed"), "overwrite");
    assert_eq!(
        ok(c.directory("/dl"), "dir"),
        ["a", "c", "b"],
        "a write keeps the order"
    );
    assert!(ok(c.directory("/dl/a"), "dir leaf").is_empty(), "leaf");
    fails(
        c.directory("/dl/none"),
        XsError::Enoent,
        "directory of a missing node",
    );
}

/// A child list over 4096 bytes: `DIRECTORY` is `E2BIG`, `DIRECTORY_PART` pages it (the
/// client falls back to it), in creation order.
pub fn directory_too_big(p: &dyn Peer) {
    let mut c = p.dom0();
    let names: Vec<String> = (0..64)
        .map(|i| format!("{i:03}{}", "x".repeat(97)))
        .collect();
    for n in &names {
        ok(c.write(&format!("/big/{n}"), b""), "write");
    }
    let m = ok(
        raw_request(&mut c, MsgType::Directory.as_u32(), 0, b"/big\0", None),
        "DIRECTORY",
    );
    assert_eq!(
        error_name(&m).as_deref(),
        Some("E2BIG"),
        "DIRECTORY of 6400 bytes"
    );
    assert_eq!(
        ok(c.directory("/big"), "directory via DIRECTORY_PART"),
        names
    );
}

/// `IS_DOMAIN_INTRODUCED` (dom0 always is), `GET_DOMAIN_PATH` for any domid and from a domU.
pub fn domain_introduction(p: &dyn Peer) {
    let mut d0 = p.dom0();
    assert!(
        ok(d0.is_domain_introduced(0), "dom0 introduced?"),
        "dom0 is introduced"
    );
    assert!(
        !ok(d0.is_domain_introduced(5), "dom5 introduced?"),
        "dom5 not yet"
    );
    let mut u = p.domu(5);
    assert!(
        ok(d0.is_domain_introduced(5), "dom5 introduced?"),
        "dom5 after INTRODUCE"
    );
    assert_eq!(
        ok(d0.get_domain_path(5), "path").as_str(),
        "/local/domain/5"
    );
    assert_eq!(
        ok(d0.get_domain_path(77), "path of any domid").as_str(),
        "/local/domain/77"
    );
    assert_eq!(
        ok(u.get_domain_path(5), "domU: own path").as_str(),
        "/local/domain/5"
    );
    assert_eq!(
        ok(u.get_domain_path(0), "domU: dom0's path").as_str(),
        "/local/domain/0"
    );
    // Introducing an introduced domain again is fine.
    ok(d0.introduce(5, 0x1005, 1), "re-introduce");
}

// ---------------------------------------------------------------------------------------------
// Permissions.

/// New nodes inherit the parent's permissions; an unprivileged creator becomes the owner,
/// dom0 creating under a domU-owned node does not.
pub fn perms_defaults_and_inheritance(p: &dyn Peer) {
    let mut d0 = p.dom0();
    ok(d0.write("/pi/a", b""), "write");
    assert_eq!(perms_str(&mut d0, "/pi/a"), "n0", "default");
    ok(
        d0.set_perms("/pi", &perms(&[(Access::None, 0), (Access::Read, 5)])),
        "set_perms /pi",
    );
    ok(d0.write("/pi/b", b""), "write");
    assert_eq!(
        perms_str(&mut d0, "/pi/b"),
        "n0,r5",
        "inherited from the parent"
    );
    assert_eq!(
        perms_str(&mut d0, "/pi/a"),
        "n0",
        "existing children keep theirs"
    );

    let mut u = make_domain(p, &mut d0, 5);
    ok(u.write("data/x", b"1"), "domU write");
    assert_eq!(perms_str(&mut u, "data/x"), "n5");
    ok(
        d0.set_perms(
            "/local/domain/5/data",
            &perms(&[(Access::None, 5), (Access::Read, 0)]),
        ),
        "set_perms data",
    );
    ok(u.write("data/y/z", b"1"), "domU write deep");
    assert_eq!(
        perms_str(&mut u, "data/y"),
        "n5,r0",
        "implicit parent: inherited"
    );
    assert_eq!(perms_str(&mut u, "data/y/z"), "n5,r0");
    ok(
        d0.write("/local/domain/5/data/by0", b"1"),
        "dom0 writes in the domU's dir",
    );
    assert_eq!(
        perms_str(&mut d0, "/local/domain/5/data/by0"),
        "n5,r0",
        "dom0 creating keeps the inherited owner"
    );
}

/// A domU may not read nodes it has no read right on (`EACCES`), and a missing node under
/// one is `EACCES` too, not `ENOENT`.
pub fn perms_domu_read_denied(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    ok(d0.write("/secret/v", b"s"), "write");
    fails(
        u.read("/secret/v"),
        XsError::Eacces,
        "domU read dom0-only node",
    );
    fails(
        u.read("/secret/none"),
        XsError::Eacces,
        "domU read missing node under dom0-only",
    );
    fails(
        u.read("/none"),
        XsError::Eacces,
        "domU read missing top-level node",
    );
    fails(u.directory("/secret"), XsError::Eacces, "domU directory");
    fails(u.get_perms("/secret/v"), XsError::Eacces, "domU get_perms");
    fails(
        u.read("/local/domain/0"),
        XsError::Eacces,
        "domU read another home",
    );
    // Its own home is (n0,r5): readable; data is its own.
    assert_eq!(read_str(&mut u, "/local/domain/5"), "");
    fails(
        u.read("data/none"),
        XsError::Enoent,
        "missing node in a readable dir",
    );
}

/// A domU may write only where it has a write right (its `data` here): elsewhere `EACCES`,
/// including its dom0-owned home itself and another domain's home.
pub fn perms_domu_write_denied(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    let _other = make_domain(p, &mut d0, 6);
    ok(d0.write("/wd/v", b"0"), "write");
    fails(
        u.write("/wd/v", b"1"),
        XsError::Eacces,
        "domU overwrite dom0 node",
    );
    fails(
        u.write("/wd/new", b"1"),
        XsError::Eacces,
        "domU create under dom0 node",
    );
    fails(
        u.write("/top", b"1"),
        XsError::Eacces,
        "domU create at top level",
    );
    fails(u.mkdir("/wd/m"), XsError::Eacces, "domU mkdir");
    fails(u.rm("/wd/v"), XsError::Eacces, "domU rm");
    fails(
        u.write("/local/domain/5/x", b"1"),
        XsError::Eacces,
        "domU write in (n0,r5) home",
    );
    fails(
        u.write("/local/domain/6/data/x", b"1"),
        XsError::Eacces,
        "domU write in dom6's data",
    );
    ok(
        u.write("/local/domain/5/data/x", b"1"),
        "domU write in its data",
    );
    assert_eq!(read_str(&mut d0, "/wd/v"), "0", "unchanged");
}

/// `SET_PERMS` needs ownership (`EACCES` otherwise, even with write access); a domU may not
/// give a node away (`EPERM`); dom0 may, but only to a domain that exists (`ENOENT`).
pub fn perms_set_perms_rules(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    let _six = p.domu(6);
    ok(d0.write("/sp/shared", b"0"), "write");
    ok(
        d0.set_perms(
            "/sp/shared",
            &perms(&[(Access::None, 0), (Access::Both, 5)]),
        ),
        "grant b5",
    );
    ok(
        u.write("/sp/shared", b"1"),
        "domU writes with the ACL grant",
    );
    fails(
        u.set_perms(
            "/sp/shared",
            &perms(&[(Access::None, 0), (Access::Both, 5)]),
        ),
        XsError::Eacces,
        "domU set_perms, not the owner",
    );
    fails(
        u.set_perms("/sp", &perms(&[(Access::Read, 0)])),
        XsError::Eacces,
        "domU set_perms on a node it cannot access",
    );
    ok(u.write("data/mine", b""), "domU write");
    ok(
        u.set_perms(
            "data/mine",
            &perms(&[(Access::None, 5), (Access::Read, 0), (Access::Read, 6)]),
        ),
        "owner changes its ACL",
    );
    assert_eq!(perms_str(&mut d0, "/local/domain/5/data/mine"), "n5,r0,r6");
    fails(
        u.set_perms("data/mine", &perms(&[(Access::None, 6)])),
        XsError::Eperm,
        "domU gives a node to another domain",
    );
    fails(
        u.set_perms("data/mine", &perms(&[(Access::None, 0)])),
        XsError::Eperm,
        "domU gives a node to dom0",
    );
    fails(
        u.set_perms("data/mine", &perms(&[(Access::None, 99)])),
        XsError::Enoent,
        "domU gives a node to a domain that does not exist",
    );
    ok(
        d0.set_perms("/sp/shared", &perms(&[(Access::None, 5)])),
        "dom0 gives a node to dom5",
    );
    ok(
        u.set_perms(
            "/sp/shared",
            &perms(&[(Access::None, 5), (Access::Read, 0)]),
        ),
        "new owner sets perms",
    );
    fails(
        d0.set_perms("/sp/shared", &perms(&[(Access::None, 99)])),
        XsError::Enoent,
        "dom0 gives a node to a domain that does not exist",
    );
    // An ACL entry naming a domain that does not exist is accepted.
    ok(
        d0.set_perms(
            "/sp/shared",
            &perms(&[(Access::None, 0), (Access::Read, 99)]),
        ),
        "ACL for a missing domain",
    );
    assert_eq!(perms_str(&mut d0, "/sp/shared"), "n0,r99");
    fails(
        u.set_perms("data/none", &perms(&[(Access::None, 5)])),
        XsError::Enoent,
        "missing node",
    );
}

/// The first entry is the owner and everyone else's default; later entries grant or deny
/// access to one domain each.
pub fn perms_acl_grants(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    let _six = p.domu(6);
    ok(d0.write("/acl/v", b"val"), "write");
    let set = |d0: &mut PeerClient, e: &[(Access, DomId)]| {
        ok(d0.set_perms("/acl/v", &perms(e)), "set_perms");
    };
    set(&mut d0, &[(Access::None, 0), (Access::Read, 5)]);
    assert_eq!(read_str(&mut u, "/acl/v"), "val", "read grant");
    fails(
        u.write("/acl/v", b"x"),
        XsError::Eacces,
        "read grant does not allow writing",
    );
    set(&mut d0, &[(Access::None, 0), (Access::Read, 6)]);
    fails(u.read("/acl/v"), XsError::Eacces, "another domain's grant");
    set(&mut d0, &[(Access::Read, 0)]);
    assert_eq!(read_str(&mut u, "/acl/v"), "val", "everyone may read");
    fails(
        u.write("/acl/v", b"x"),
        XsError::Eacces,
        "everyone may only read",
    );
    set(&mut d0, &[(Access::None, 0), (Access::Write, 5)]);
    ok(u.write("/acl/v", b"w"), "write grant");
    fails(
        u.read("/acl/v"),
        XsError::Eacces,
        "write grant does not allow reading",
    );
    set(&mut d0, &[(Access::Both, 0), (Access::None, 5)]);
    fails(
        u.read("/acl/v"),
        XsError::Eacces,
        "explicit n5 beats the default b",
    );
    set(&mut d0, &[(Access::None, 0), (Access::Both, 5)]);
    assert_eq!(read_str(&mut u, "/acl/v"), "w");
    // Children inherit at creation, later changes do not propagate.
    ok(
        u.write("/acl/v/child", b"c"),
        "domU creates a child with b5 on the parent",
    );
    assert_eq!(
        perms_str(&mut d0, "/acl/v/child"),
        "n5,b5",
        "creator is the owner"
    );
}

/// Toolstack operations from a domU are `EACCES`; `GET_DOMAIN_PATH` and `RESET_WATCHES` are
/// open to everyone.
pub fn domu_privileged_ops_denied(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    fails(u.introduce(7, 0x1007, 1), XsError::Eacces, "domU INTRODUCE");
    fails(u.release(5), XsError::Eacces, "domU RELEASE");
    fails(
        u.is_domain_introduced(5),
        XsError::Eacces,
        "domU IS_DOMAIN_INTRODUCED",
    );
    fails(u.resume(5), XsError::Eacces, "domU RESUME");
    fails(u.set_target(5, 0), XsError::Eacces, "domU SET_TARGET");
    fails(u.control("print", b"x\0"), XsError::Eacces, "domU CONTROL");
    ok(u.reset_watches(), "domU RESET_WATCHES");
    ok(u.get_domain_path(5), "domU GET_DOMAIN_PATH");
}

/// Relative paths are relative to `/local/domain/<domid>` of the connection: the domU's own,
/// dom0's (`/local/domain/0`) on the socket.
pub fn relative_paths(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    ok(u.write("data/rel", b"r"), "domU relative write");
    assert_eq!(read_str(&mut d0, "/local/domain/5/data/rel"), "r");
    assert_eq!(
        read_str(&mut u, "/local/domain/5/data/rel"),
        "r",
        "domU absolute read"
    );
    assert_eq!(read_str(&mut u, "data/rel"), "r", "domU relative read");
    assert_eq!(ok(u.directory("data"), "domU relative directory"), ["rel"]);
    assert_eq!(perms_str(&mut u, "data/rel"), "n5");
    ok(u.mkdir("data/m"), "domU relative mkdir");
    ok(u.rm("data/rel"), "domU relative rm");
    fails(
        d0.read("/local/domain/5/data/rel"),
        XsError::Enoent,
        "after relative rm",
    );
    ok(d0.write("rel0", b"z"), "dom0 relative write");
    assert_eq!(
        read_str(&mut d0, "/local/domain/0/rel0"),
        "z",
        "dom0 relative = /local/domain/0"
    );
}

// ---------------------------------------------------------------------------------------------
// Transactions.

/// Writes in a transaction are invisible to others until it commits; reads in it see its
/// own writes and a snapshot of the rest.
pub fn tx_isolation(p: &dyn Peer) {
    let mut a = p.dom0();
    let mut b = p.dom0();
    ok(a.write("/tx/v", b"old"), "write");
    ok(a.write("/tx/other", b"o1"), "write");
    {
        let mut tx = ok(a.transaction_start(), "start");
        assert_eq!(read_str(&mut tx, "/tx/v"), "old");
        ok(tx.write("/tx/v", b"new"), "tx write");
        ok(tx.write("/tx/n/deep", b"x"), "tx create");
        assert_eq!(read_str(&mut tx, "/tx/v"), "new", "tx sees its own write");
        assert_eq!(read_str(&mut b, "/tx/v"), "old", "others do not");
        fails(
            b.read("/tx/n"),
            XsError::Enoent,
            "others do not see created nodes",
        );
        assert_eq!(ok(b.directory("/tx"), "dir"), ["v", "other"]);
        // Another connection changes /tx/other after the transaction read nothing of it.
        ok(b.write("/tx/other", b"o2"), "b writes other");
        ok(
            tx.commit(),
            "commit (no conflict on nodes the transaction did not touch)",
        );
    }
    assert_eq!(read_str(&mut b, "/tx/v"), "new", "visible after commit");
    assert_eq!(read_str(&mut b, "/tx/n/deep"), "x");
    assert_eq!(read_str(&mut b, "/tx/other"), "o2");

    // Snapshot: a node read in the transaction keeps its value there.
    let mut tx = ok(a.transaction_start(), "start");
    assert_eq!(read_str(&mut tx, "/tx/v"), "new");
    ok(b.write("/tx/v", b"newer"), "b writes v");
    assert_eq!(
        read_str(&mut tx, "/tx/v"),
        "new",
        "re-read in the transaction: old value"
    );
    fails(
        tx.commit(),
        XsError::Eagain,
        "commit after a read node changed",
    );
}

/// `EAGAIN` at commit when another connection changed a node the transaction read or wrote,
/// and nothing of the transaction is applied.
pub fn tx_conflict_eagain(p: &dyn Peer) {
    let mut a = p.dom0();
    let mut b = p.dom0();
    ok(a.write("/tc/x", b"0"), "write");
    ok(a.write("/tc/w", b"0"), "write");
    // Read, then someone else writes it.
    let mut tx = ok(a.transaction_start(), "start");
    assert_eq!(read_str(&mut tx, "/tc/x"), "0");
    ok(b.write("/tc/x", b"b"), "b writes x");
    ok(tx.write("/tc/y", b"a"), "tx writes y");
    fails(tx.commit(), XsError::Eagain, "read-modified conflict");
    fails(a.read("/tc/y"), XsError::Enoent, "nothing applied");
    // Write-only: both write the same node.
    let mut tx = ok(a.transaction_start(), "start");
    ok(tx.write("/tc/w", b"a"), "tx writes w");
    ok(b.write("/tc/w", b"b"), "b writes w");
    fails(tx.commit(), XsError::Eagain, "write-write conflict");
    assert_eq!(read_str(&mut a, "/tc/w"), "b");
    // Creation under a parent someone else changed (a new child).
    let mut tx = ok(a.transaction_start(), "start");
    ok(tx.write("/tc/p/a", b"1"), "tx creates p/a");
    ok(b.write("/tc/p/b", b"1"), "b creates p/b");
    fails(tx.commit(), XsError::Eagain, "both added children to /tc/p");
    fails(a.read("/tc/p/a"), XsError::Enoent, "nothing applied");
    // The retry helper wins on the next attempt.
    let n = ok(
        a.transact(|tx| {
            let v = tx
                .read_u32("/tc/n")
                .or_else(|e| if e.is_enoent() { Ok(0) } else { Err(e) })?;
            tx.write_u32("/tc/n", v + 1)?;
            Ok(v + 1)
        }),
        "transact",
    );
    assert_eq!(n, 1);
}

/// `TRANSACTION_END F` discards everything.
pub fn tx_abort(p: &dyn Peer) {
    let mut a = p.dom0();
    ok(a.write("/ta/v", b"keep"), "write");
    let mut tx = ok(a.transaction_start(), "start");
    ok(tx.write("/ta/v", b"lost"), "tx write");
    ok(tx.write("/ta/new", b"lost"), "tx create");
    ok(tx.rm("/ta/v"), "tx rm");
    fails(tx.read("/ta/v"), XsError::Enoent, "tx sees its rm");
    ok(tx.abort(), "abort");
    assert_eq!(read_str(&mut a, "/ta/v"), "keep");
    fails(a.read("/ta/new"), XsError::Enoent, "aborted create");
}

/// A transaction id the connection does not have is `ENOENT`, for every operation, and so is
/// ending a transaction twice or ending none.
pub fn tx_bad_id(p: &dyn Peer) {
    let mut a = p.dom0();
    let mut b = p.dom0();
    ok(a.write("/tb/v", b"1"), "write");
    let read = Request::Read("/tb/v".parse().expect("path"));
    fails(
        a.request(999, &read),
        XsError::Enoent,
        "READ in an unknown transaction",
    );
    let write = Request::Write {
        path: "/tb/v".parse().expect("path"),
        value: b"2".to_vec(),
    };
    fails(
        a.request(999, &write),
        XsError::Enoent,
        "WRITE in an unknown transaction",
    );
    fails(
        a.transaction_end(999, true),
        XsError::Enoent,
        "END of an unknown transaction",
    );
    fails(
        a.transaction_end(0, true),
        XsError::Enoent,
        "END without a transaction",
    );
    let id = ok(a.transaction_start(), "start").id();
    // (The handle was dropped: it aborted the transaction.)
    fails(
        a.transaction_end(id, true),
        XsError::Enoent,
        "END of an ended transaction",
    );
    // Another connection's transaction is not ours.
    let tx = ok(b.transaction_start(), "b start");
    let bid = tx.id();
    fails(
        a.request(bid, &read),
        XsError::Enoent,
        "READ in another connection's transaction",
    );
    ok(tx.abort(), "b abort");
    // Ids are per connection, from 1.
    let t1 = ok(
        p.dom0().request(0, &Request::TransactionStart),
        "start on a new connection",
    );
    assert_eq!(t1, Response::TransactionStart(1), "first transaction id");
    assert_eq!(read_str(&mut a, "/tb/v"), "1");
}

/// A domU's transaction over its ring conflicts with a dom0 write like any other.
pub fn tx_domu(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    ok(u.write("data/c", b"0"), "write");
    let mut tx = ok(u.transaction_start(), "domU start");
    assert_eq!(read_str(&mut tx, "data/c"), "0");
    ok(tx.write("data/d", b"1"), "domU tx write");
    fails(
        d0.read("/local/domain/5/data/d"),
        XsError::Enoent,
        "invisible to dom0",
    );
    ok(d0.write("/local/domain/5/data/c", b"9"), "dom0 writes c");
    fails(
        tx.commit(),
        XsError::Eagain,
        "domU commit after dom0 changed a read node",
    );
    let mut tx = ok(u.transaction_start(), "domU start");
    ok(tx.write("data/d", b"2"), "domU tx write");
    ok(tx.commit(), "domU commit");
    assert_eq!(read_str(&mut d0, "/local/domain/5/data/d"), "2");
}

// ---------------------------------------------------------------------------------------------
// Watches.

/// `WATCH` fires once right away with the watched path, whether the node exists or not.
pub fn watch_initial_event(p: &dyn Peer) {
    let mut c = p.dom0();
    ok(c.watch("/wi/missing", "t1"), "watch a missing node");
    expect_event(&mut c, "t1", "/wi/missing", "initial event (missing node)");
    ok(c.write("/wi/there", b""), "write");
    ok(c.watch("/wi/there", "t2"), "watch an existing node");
    expect_event(&mut c, "t2", "/wi/there", "initial event (existing node)");
    expect_no_event(&mut c, "t1", "only one initial event");
    expect_no_event(&mut c, "t2", "only one initial event");
}

/// A change fires the watches on the node and on every ancestor, with the changed node's
/// path: `WRITE` (not for the parents it creates), `MKDIR` of a new node, `SET_PERMS`, `RM`.
/// Siblings sharing a name prefix and ancestors do not fire.
pub fn watch_child_events(p: &dyn Peer) {
    let mut w = p.dom0();
    let mut c = p.dom0();
    ok(c.write("/wc/w", b""), "write");
    ok(w.watch("/wc/w", "t"), "watch");
    expect_event(&mut w, "t", "/wc/w", "initial");
    ok(c.write("/wc/w/a", b"1"), "write child");
    expect_event(&mut w, "t", "/wc/w/a", "write child");
    ok(
        c.write("/wc/w/x/y/z", b"1"),
        "write grandchild (creating x, x/y)",
    );
    expect_event(&mut w, "t", "/wc/w/x/y/z", "write grandchild");
    expect_no_event(&mut w, "t", "no events for implicitly created parents");
    ok(c.write("/wc/w", b"self"), "write the watched node");
    expect_event(&mut w, "t", "/wc/w", "write the node itself");
    ok(c.mkdir("/wc/w/m"), "mkdir new");
    expect_event(&mut w, "t", "/wc/w/m", "mkdir");
    ok(
        c.set_perms("/wc/w/a", &perms(&[(Access::Read, 0)])),
        "set_perms",
    );
    expect_event(&mut w, "t", "/wc/w/a", "set_perms");
    ok(c.rm("/wc/w/a"), "rm child");
    expect_event(&mut w, "t", "/wc/w/a", "rm child");
    ok(
        c.write("/wc/wx", b"1"),
        "write a sibling with the same prefix",
    );
    ok(c.write("/wc", b"1"), "write the parent");
    expect_no_event(&mut w, "t", "siblings and ancestors");
    ok(c.mkdir("/wc/w/m"), "mkdir of an existing node");
    ok(c.rm("/wc/w/nothing"), "rm of a missing node");
    let ev = drain_events(&mut w, Some("t"));
    // Observed on xenstored 4.17: MKDIR of an existing node and RM of a missing one do not
    // fire.
    assert!(ev.is_empty(), "no-op mkdir/rm fired: {ev:?}");
}

/// Removing a node fires, with its own path, the watches on the node, on its ancestors, and
/// the watches set exactly on each removed descendant. Watches below it on nodes that do not
/// exist are not fired.
pub fn watch_rm_fires_descendant_watches(p: &dyn Peer) {
    let mut w = p.dom0();
    let mut c = p.dom0();
    ok(c.write("/wr/p/q/r", b"1"), "write");
    for (path, tok) in [
        ("/wr", "top"),
        ("/wr/p", "p"),
        ("/wr/p/q/r", "r"),
        ("/wr/p/q/none", "none"),
    ] {
        ok(w.watch(path, tok), "watch");
        expect_event(&mut w, tok, path, "initial");
    }
    ok(c.rm("/wr/p"), "rm /wr/p");
    expect_event(&mut w, "top", "/wr/p", "ancestor watch");
    expect_event(&mut w, "p", "/wr/p", "watch on the removed node");
    expect_event(&mut w, "r", "/wr/p/q/r", "watch on a removed descendant");
    expect_no_event(&mut w, "none", "watch below on a missing node");
    expect_no_event(&mut w, "top", "one event per removal for ancestors");
    expect_no_event(&mut w, "p", "one event");
    expect_no_event(&mut w, "r", "one event");
}

/// A domU's relative watch gets relative event paths; its absolute watch absolute ones.
pub fn watch_relative_paths(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    ok(u.watch("data", "rel"), "relative watch");
    expect_event(&mut u, "rel", "data", "initial event, relative");
    ok(u.watch("/local/domain/5/data", "abs"), "absolute watch");
    expect_event(
        &mut u,
        "abs",
        "/local/domain/5/data",
        "initial event, absolute",
    );
    ok(d0.write("/local/domain/5/data/x", b"1"), "dom0 writes");
    expect_event(&mut u, "rel", "data/x", "relative event path");
    expect_event(
        &mut u,
        "abs",
        "/local/domain/5/data/x",
        "absolute event path",
    );
    ok(u.write("data/y", b"1"), "domU writes");
    expect_event(&mut u, "rel", "data/y", "own write, relative");
    expect_event(
        &mut u,
        "abs",
        "/local/domain/5/data/y",
        "own write, absolute",
    );
    // dom0 on the socket: relative to /local/domain/0.
    ok(d0.watch("zero", "z"), "dom0 relative watch");
    expect_event(&mut d0, "z", "zero", "dom0 initial, relative");
    ok(d0.write("/local/domain/0/zero/k", b"1"), "dom0 writes");
    expect_event(&mut d0, "z", "zero/k", "dom0 relative event path");
}

/// The same path and token twice is `EEXIST`; `UNWATCH` of an unknown watch is `ENOENT`;
/// after `UNWATCH` no more events. The same path with another token is another watch.
pub fn watch_duplicate_and_unwatch(p: &dyn Peer) {
    let mut c = p.dom0();
    ok(c.watch("/wd/a", "t"), "watch");
    expect_event(&mut c, "t", "/wd/a", "initial");
    fails(c.watch("/wd/a", "t"), XsError::Eexist, "duplicate watch");
    ok(c.watch("/wd/a", "u"), "same path, other token");
    expect_event(&mut c, "u", "/wd/a", "initial");
    fails(
        c.unwatch("/wd/b", "t"),
        XsError::Enoent,
        "unwatch unknown path",
    );
    fails(
        c.unwatch("/wd/a", "zz"),
        XsError::Enoent,
        "unwatch unknown token",
    );
    ok(c.unwatch("/wd/a", "t"), "unwatch");
    ok(c.write("/wd/a", b"1"), "write");
    expect_event(&mut c, "u", "/wd/a", "remaining watch fires");
    expect_no_event(&mut c, "t", "unwatched");
    ok(c.reset_watches(), "reset_watches");
    ok(c.write("/wd/a", b"2"), "write");
    expect_no_event(&mut c, "u", "after RESET_WATCHES");
}

/// A domU gets an event only for nodes it may read; the initial event fires regardless.
pub fn watch_events_filtered_by_perms(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    ok(d0.write("/wf/secret", b""), "write");
    ok(u.watch("/wf", "t"), "domU watches a dom0-only subtree");
    expect_event(&mut u, "t", "/wf", "initial event despite no read access");
    ok(d0.write("/wf/secret/x", b"1"), "dom0 writes there");
    expect_no_event(&mut u, "t", "event for an unreadable node");
    ok(
        d0.set_perms(
            "/wf/secret/x",
            &perms(&[(Access::None, 0), (Access::Read, 5)]),
        ),
        "grant r5",
    );
    expect_event(&mut u, "t", "/wf/secret/x", "set_perms making it readable");
    ok(d0.write("/wf/secret/x", b"2"), "dom0 writes it again");
    expect_event(&mut u, "t", "/wf/secret/x", "readable now");
}

/// `@introduceDomain` fires (path `@introduceDomain`) for dom0's watch when a domain is
/// introduced, not when it is introduced again; a domU's watch on it gets the initial event
/// only (the special node is `n0`).
pub fn watch_introduce_domain(p: &dyn Peer) {
    let mut d0 = p.dom0();
    ok(
        d0.watch("@introduceDomain", "intro"),
        "watch @introduceDomain",
    );
    expect_event(&mut d0, "intro", "@introduceDomain", "initial");
    let mut u = p.domu(5);
    expect_event(&mut d0, "intro", "@introduceDomain", "introduction of dom5");
    ok(
        u.watch("@introduceDomain", "uintro"),
        "domU watches @introduceDomain",
    );
    expect_event(&mut u, "uintro", "@introduceDomain", "domU initial");
    let _six = p.domu(6);
    expect_event(&mut d0, "intro", "@introduceDomain", "introduction of dom6");
    expect_no_event(&mut u, "uintro", "a domU is not told");
    ok(d0.introduce(6, 0x1006, 1), "re-introduce dom6");
    expect_no_event(&mut d0, "intro", "no event for a re-introduction");
    // Read access to the special name lets a domU see the events.
    ok(
        d0.set_perms(
            "@introduceDomain",
            &perms(&[(Access::None, 0), (Access::Read, 5)]),
        ),
        "SET_PERMS @introduceDomain (n0,r5)",
    );
    let _seven = p.domu(7);
    expect_event(&mut d0, "intro", "@introduceDomain", "introduction of dom7");
    expect_event(
        &mut u,
        "uintro",
        "@introduceDomain",
        "domU with r on @introduceDomain",
    );
}

/// Domain death: the nodes the domain owned are removed (watches fire), then
/// `@releaseDomain` fires; the domain is no longer introduced.
pub fn watch_release_domain_on_death(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    ok(u.write("data/x", b"1"), "domU write");
    ok(d0.watch("@releaseDomain", "rel"), "watch @releaseDomain");
    expect_event(&mut d0, "rel", "@releaseDomain", "initial");
    ok(d0.watch("/local/domain/5", "home"), "watch the home");
    expect_event(&mut d0, "home", "/local/domain/5", "initial");
    drop(u);
    p.kill_domain(5);
    let first = next_event(&mut d0, None, "events of dom5's death");
    let second = next_event(&mut d0, None, "events of dom5's death");
    assert_eq!(
        (first.token.as_str(), first.path.as_str()),
        ("home", "/local/domain/5/data"),
        "first: the removal of the nodes dom5 owned"
    );
    assert_eq!(
        (second.token.as_str(), second.path.as_str()),
        ("rel", "@releaseDomain"),
        "then @releaseDomain"
    );
    assert_eq!(
        drain_events(&mut d0, None),
        Vec::<String>::new(),
        "nothing more"
    );
    fails(
        d0.read("/local/domain/5/data"),
        XsError::Enoent,
        "dom5-owned node removed",
    );
    assert_eq!(
        read_str(&mut d0, "/local/domain/5"),
        "",
        "dom0-owned home kept"
    );
    assert!(!ok(d0.is_domain_introduced(5), "introduced?"), "dom5 gone");
}

/// `XS_RELEASE` from dom0 fires `@releaseDomain` and forgets the domain.
pub fn watch_release_domain_on_release(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let u = make_domain(p, &mut d0, 5);
    ok(d0.watch("@releaseDomain", "rel"), "watch @releaseDomain");
    expect_event(&mut d0, "rel", "@releaseDomain", "initial");
    ok(d0.release(5), "XS_RELEASE 5");
    expect_event(&mut d0, "rel", "@releaseDomain", "release");
    assert!(
        !ok(d0.is_domain_introduced(5), "introduced?"),
        "dom5 released"
    );
    fails(d0.release(5), XsError::Enoent, "release an unknown domain");
    drop(u);
}

// ---------------------------------------------------------------------------------------------
// Malformed requests.

/// Paths breaking xenstored's rules are `EINVAL` for every operation, from dom0 and from a
/// domU: `.` and `..` (`.` is not a valid character), other bad characters, a trailing `/`,
/// `//`, an empty path, too long.
pub fn malformed_paths(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    let long_abs = format!("/{}", "a".repeat(3071)); // 3072 bytes: over the limit
    let long_rel = "a".repeat(2049);
    let bad: Vec<(&str, String)> = vec![
        ("dot-dot", "/mp/../x".into()),
        ("dot", "/mp/./x".into()),
        ("dot in name", "/mp/a.b".into()),
        ("space", "/mp/a b".into()),
        ("non-ASCII", "/mp/\u{e9}".into()),
        ("trailing slash", "/mp/".into()),
        ("double slash", "/mp//x".into()),
        ("empty", "".into()),
        ("absolute too long", long_abs),
        ("relative too long", long_rel),
        ("special name for a node op", "@introduceDomain".into()),
    ];
    for (who, c) in [("dom0", &mut d0), ("domU", &mut u)] {
        for (what, path) in &bad {
            let mut nul = path.as_bytes().to_vec();
            nul.push(0);
            let mut write = nul.clone();
            write.extend_from_slice(b"v");
            let mut watch = nul.clone();
            watch.extend_from_slice(b"tok\0");
            let ops: [(&str, MsgType, &[u8]); 6] = [
                ("READ", MsgType::Read, &nul),
                ("WRITE", MsgType::Write, &write),
                ("MKDIR", MsgType::Mkdir, &nul),
                ("RM", MsgType::Rm, &nul),
                ("DIRECTORY", MsgType::Directory, &nul),
                ("GET_PERMS", MsgType::GetPerms, &nul),
            ];
            for (op, ty, payload) in ops {
                let e = raw_error(c, ty.as_u32(), payload, &format!("{who} {op} {what}"));
                assert_eq!(e, "EINVAL", "{who} {op} of a path with {what}");
            }
            if *what != "special name for a node op" {
                let e = raw_error(
                    c,
                    MsgType::Watch.as_u32(),
                    &watch,
                    &format!("{who} WATCH {what}"),
                );
                assert_eq!(e, "EINVAL", "{who} WATCH of a path with {what}");
            }
        }
    }
    // The limits themselves are fine: 2048 bytes after /local/domain/N/.
    let rel_max = "a".repeat(2048);
    fails(
        u.read(&rel_max),
        XsError::Enoent,
        "domU relative path of 2048 bytes",
    );
    let abs_max = format!("/local/domain/0/{}", "a".repeat(2048));
    fails(
        d0.read(&abs_max),
        XsError::Enoent,
        "dom0 path of 2048 bytes after the prefix",
    );
    // GET_PERMS of a special name is EINVAL in 4.17 (SET_PERMS of one works).
    let e = raw_error(
        &mut d0,
        MsgType::GetPerms.as_u32(),
        b"@introduceDomain\0",
        "GET_PERMS @",
    );
    assert_eq!(e, "EINVAL", "GET_PERMS @introduceDomain");
}

/// Payloads with the wrong number of arguments or malformed values are `EINVAL` and the
/// connection stays usable.
pub fn malformed_payloads(p: &dyn Peer) {
    let mut c = p.dom0();
    // Every payload is NUL-terminated: 4.17 reads past unterminated ones (see the module
    // docs), so their outcome is not defined by the daemon.
    let cases: [(&str, MsgType, &[u8]); 6] = [
        ("READ of an empty path", MsgType::Read, b"\0"),
        ("WATCH without token", MsgType::Watch, b"/x\0"),
        (
            "TRANSACTION_END neither T nor F",
            MsgType::TransactionEnd,
            b"X\0",
        ),
        ("SET_PERMS without perms", MsgType::SetPerms, b"/tool\0"),
        (
            "SET_PERMS bad perm letter",
            MsgType::SetPerms,
            b"/tool\0x0\0",
        ),
        ("INTRODUCE with one argument", MsgType::Introduce, b"abc\0"),
    ];
    for (what, ty, payload) in cases {
        assert_eq!(
            raw_error(&mut c, ty.as_u32(), payload, what),
            "EINVAL",
            "{what}"
        );
    }
    // TRANSACTION_END X inside a real transaction: EINVAL, and the transaction lives on.
    let id = match ok(c.request(0, &Request::TransactionStart), "start") {
        Response::TransactionStart(id) => id,
        other => panic!("TRANSACTION_START: {other:?}"),
    };
    let m = ok(
        raw_request(&mut c, MsgType::TransactionEnd.as_u32(), id, b"X\0", None),
        "END X",
    );
    assert_eq!(
        error_name(&m).as_deref(),
        Some("EINVAL"),
        "END X in a transaction"
    );
    ok(c.transaction_end(id, false), "the transaction still exists");
    ok(c.write("/mp/ok", b"1"), "connection still usable");
}

/// An unknown message type (99, the removed `XS_RESTRICT` 20) and the server-only types
/// (`WATCH_EVENT`, `ERROR`) are answered `XS_ERROR "ENOSYS"` with the request's `req_id` and
/// `tx_id`, from dom0 and from a domU; the connection stays usable.
pub fn unknown_message_type(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    for (who, c) in [("dom0", &mut d0), ("domU", &mut u)] {
        for ty in [
            99u32,
            20,
            MsgType::WatchEvent.as_u32(),
            MsgType::Error.as_u32(),
            0xffff,
        ] {
            let m = ok(
                raw_request(c, ty, 0, b"x\0", None),
                &format!("{who} type {ty}"),
            );
            assert_eq!(
                m.header.ty,
                MsgType::Error.as_u32(),
                "{who} type {ty}: reply type"
            );
            assert_eq!(m.payload, b"ENOSYS\0", "{who} type {ty}: reply payload");
        }
        let m = ok(
            raw_request(c, 99, 0, b"", None),
            &format!("{who} type 99, empty"),
        );
        assert_eq!(error_name(&m).as_deref(), Some("ENOSYS"));
        // tx_id is echoed even if there is no such transaction.
        let m = ok(
            raw_request(c, 99, 42, b"", None),
            &format!("{who} type 99 tx 42"),
        );
        assert_eq!(
            (m.header.tx_id, error_name(&m).as_deref()),
            (42, Some("ENOSYS"))
        );
        ok(c.get_domain_path(0), "still usable");
    }
}

/// A header with `len` > 4096: the daemon drops that connection (reset, no reply); every
/// other connection keeps working.
pub fn oversized_message_drops_connection(p: &dyn Peer) {
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    ok(d0.write("/ov/v", b"1"), "write");
    let mut bad = p.dom0();
    let r = raw_request(&mut bad, MsgType::Read.as_u32(), 0, &[b'a'; 4097], None);
    match r {
        Err(XsClientError::Closed) => {}
        other => panic!("len 4097: expected the connection to be dropped, got {other:?}"),
    }
    // Even a header alone claiming more is enough.
    let mut bad2 = p.dom0();
    let r = raw_request(
        &mut bad2,
        MsgType::Write.as_u32(),
        0,
        b"/ov/v\0",
        Some(100_000),
    );
    match r {
        Err(XsClientError::Closed) => {}
        other => panic!("len 100000: expected the connection to be dropped, got {other:?}"),
    }
    assert_eq!(read_str(&mut d0, "/ov/v"), "1", "other dom0 connection");
    assert_eq!(read_str(&mut p.dom0(), "/ov/v"), "1", "a new connection");
    ok(u.write("data/x", b"1"), "the domU");
}

// ---------------------------------------------------------------------------------------------
// Quotas (peer started with Limits::SMALL).

#[track_caller]
fn small(p: &dyn Peer) -> Limits {
    let l = p.limits();
    assert!(
        l.nodes <= 64 && l.watches <= 64 && l.transactions <= 64 && l.node_size <= 1024,
        "{}: the quota cases need a peer with small quotas (Limits::SMALL), got {l:?}",
        p.name()
    );
    l
}

/// `-E`: a domain may own `nodes` nodes (its home counts once given to it); the next create
/// is `ENOSPC`; removing one makes room.
pub fn quota_nodes(p: &dyn Peer) {
    let l = small(p);
    let mut d0 = p.dom0();
    let mut u = p.domu(5);
    ok(d0.mkdir("/local/domain/5"), "mkdir home");
    ok(
        d0.set_perms("/local/domain/5", &perms(&[(Access::None, 5)])),
        "home owned by dom5",
    );
    // The home is one node owned by dom5.
    for i in 1..l.nodes {
        ok(
            u.write(&format!("n{i}"), b"v"),
            &format!("node {} of {}", i + 1, l.nodes),
        );
    }
    fails(
        u.write("extra", b"v"),
        XsError::Enospc,
        "one node over the quota",
    );
    fails(u.mkdir("extra"), XsError::Enospc, "mkdir over the quota");
    ok(u.write("n1", b"overwrite"), "overwriting is not a new node");
    ok(u.rm("n1"), "rm");
    ok(u.write("extra", b"v"), "room again");
    fails(u.write("extra2", b"v"), XsError::Enospc, "full again");
    // Nodes dom0 creates for dom5 count too: dom0 gives one away, dom5 cannot create.
    ok(u.rm("extra"), "rm");
    ok(d0.write("/given", b""), "dom0 write");
    ok(
        d0.set_perms("/given", &perms(&[(Access::None, 5)])),
        "give /given to dom5",
    );
    fails(
        u.write("extra", b"v"),
        XsError::Enospc,
        "the given node counts",
    );
}

/// `-W`: a domain connection may hold `watches + 1` watches (xenstored refuses only when it
/// already has *more than* the quota); the next is `E2BIG`.
pub fn quota_watches(p: &dyn Peer) {
    let l = small(p);
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    for i in 0..=l.watches {
        ok(
            u.watch(&format!("data/w{i}"), "t"),
            &format!("watch {}", i + 1),
        );
    }
    fails(
        u.watch("data/over", "t"),
        XsError::E2big,
        "watch over the quota",
    );
    ok(u.unwatch("data/w0", "t"), "unwatch");
    ok(u.watch("data/over", "t"), "room again");
}

/// `-t`: a domain connection may hold `transactions + 1` open transactions; the next start
/// is `ENOSPC`.
pub fn quota_transactions(p: &dyn Peer) {
    let l = small(p);
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    let mut ids = Vec::new();
    for i in 0..=l.transactions {
        match ok(
            u.request(0, &Request::TransactionStart),
            &format!("start {}", i + 1),
        ) {
            Response::TransactionStart(id) => ids.push(id),
            other => panic!("TRANSACTION_START: {other:?}"),
        }
    }
    fails(
        u.request(0, &Request::TransactionStart),
        XsError::Enospc,
        "transaction over the quota",
    );
    ok(u.transaction_end(ids[0], false), "end one");
    ok(u.request(0, &Request::TransactionStart), "room again");
}

/// `-S`: an unprivileged write is refused (`ENOSPC`) when the node's accounted size — 24 +
/// 8 per permission + value + child names with their NULs — would reach `node_size`; that
/// includes the parent whose child list grows.
pub fn quota_node_size(p: &dyn Peer) {
    let l = small(p);
    let mut d0 = p.dom0();
    let mut u = make_domain(p, &mut d0, 5);
    // data/v has one permission entry: 32 bytes of overhead.
    let fit = l.node_size - 32 - 1;
    ok(
        u.write("data/v", &vec![b'x'; fit]),
        "largest value that fits",
    );
    fails(
        u.write("data/v", &vec![b'x'; fit + 1]),
        XsError::Enospc,
        "one byte more reaches node_size",
    );
    assert_eq!(ok(u.read("data/v"), "read").len(), fit, "unchanged");
    // data: 32 + "v\0" = 34 so far; a child name of node_size - 34 - 1 bytes (+ NUL) fills it.
    let name = "n".repeat(l.node_size - 34 - 1);
    fails(
        u.write(&format!("data/{name}"), b""),
        XsError::Enospc,
        "the parent's child list would reach node_size",
    );
    let name = "n".repeat(l.node_size - 34 - 2);
    ok(
        u.write(&format!("data/{name}"), b""),
        "a child name that still fits",
    );
}

/// dom0 (privileged) is not bound by any of the quotas.
pub fn quota_dom0_exempt(p: &dyn Peer) {
    let l = small(p);
    let mut d0 = p.dom0();
    for i in 0..2 * l.nodes {
        ok(d0.write(&format!("/qe/n{i}"), b"v"), "dom0 nodes");
    }
    ok(
        d0.write("/qe/big", &vec![b'x'; 4 * l.node_size]),
        "dom0 node size",
    );
    for i in 0..2 * l.watches + 2 {
        ok(d0.watch(&format!("/qe/w{i}"), "t"), "dom0 watches");
    }
    let mut ids = Vec::new();
    for _ in 0..2 * l.transactions + 2 {
        match ok(
            d0.request(0, &Request::TransactionStart),
            "dom0 transactions",
        ) {
            Response::TransactionStart(id) => ids.push(id),
            other => panic!("TRANSACTION_START: {other:?}"),
        }
    }
    for id in ids {
        ok(d0.transaction_end(id, false), "end");
    }
}
