//! [`Store`]: connections, request dispatch, watches, domains, output queues.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::domain::{Domain, Domains};
use super::node::{
    node_mem, parent, perm_for, to_perms, watch_matches, Node, NodePerm, Who, PERM_OWNER,
    PERM_READ, PERM_WRITE,
};
use super::ops::{tree_put, Fire, Op, Tree};
use super::quotas::Quotas;
use super::txn::Transaction;
use super::{ConnId, Notice};
use crate::error::{CodecError, XsError};
use crate::msg::{Request, Response};
use crate::path::{self, Path, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::{Access, Perms};
use crate::wire::{Header, Message, MsgType, XENSTORE_PAYLOAD_MAX};
use crate::{DomId, EvtchnPort};

/// A registered watch (`struct watch`).
#[derive(Debug, Clone)]
struct Watch {
    /// Absolute path or `@` special name.
    node: String,
    token: String,
    /// Registered with a relative path: events carry paths relative to the domain's home.
    relative: bool,
}

impl Watch {
    /// What the watch counts for the memory quota (`add_watch()`: path + token, no NULs).
    fn mem(&self) -> usize {
        self.node.len().saturating_add(self.token.len())
    }
}

/// `sizeof(struct xsd_sockmsg)`: what xenstored counts per queued message besides the payload.
const MSG_HDR_SIZE: usize = 16;
/// `DEFAULT_BUFFER_SIZE`: replies with at most this much payload are queued without a memory
/// quota check ("path might be used for returning error").
const SMALL_REPLY: usize = 16;

/// What a queued message counts for the memory quota (`send_reply()`, `send_event()`).
fn msg_mem(m: &Message) -> usize {
    m.payload.len().saturating_add(MSG_HDR_SIZE)
}

/// One connection (`struct connection`): a Unix-socket client (always dom0, privileged) or the
/// ring of an introduced domain.
#[derive(Debug)]
struct Conn {
    domid: DomId,
    /// The ring connection of an introduced domain (as opposed to a socket).
    domain: bool,
    watches: Vec<Watch>,
    txs: BTreeMap<u32, Transaction>,
    next_tx: u32,
    outbox: VecDeque<Message>,
    /// Memory-quota bytes of `outbox` (sum of [`msg_mem`]).
    out_bytes: usize,
    /// Cut off after ignoring its replies past the hard bound.
    broken: bool,
    dropped_events: u64,
}

impl Conn {
    fn new(domid: DomId, domain: bool) -> Conn {
        Conn {
            domid,
            domain,
            watches: Vec::new(),
            txs: BTreeMap::new(),
            next_tx: 1,
            outbox: VecDeque::new(),
            out_bytes: 0,
            broken: false,
            dropped_events: 0,
        }
    }

    fn privileged(&self) -> bool {
        self.domid == 0
    }

    /// Queue a reply. Past twice the bound the peer has ignored far too many replies: cut it
    /// off (see [`Quotas::outbox`]).
    fn push_reply(&mut self, msg: Message, bound: usize) {
        if self.broken {
            return;
        }
        if self.outbox.len() >= bound.saturating_mul(2) {
            self.broken = true;
            self.outbox.clear();
            self.out_bytes = 0;
            return;
        }
        self.out_bytes = self.out_bytes.saturating_add(msg_mem(&msg));
        self.outbox.push_back(msg);
    }

    /// What the connection holds for its domain's memory quota: watches, transaction copies,
    /// queued output.
    fn memory(&self) -> usize {
        let w = self.watches.iter().map(Watch::mem);
        let t = self.txs.values().map(Transaction::memory);
        w.chain(t).fold(self.out_bytes, usize::saturating_add)
    }

    /// `send_event()`: an event whose payload would exceed `XENSTORE_PAYLOAD_MAX` is dropped;
    /// one identical to an event still queued is dropped unless it is a `@` special event
    /// (XSA-326, "don't buffer multiple identical watch events"); past the bound, or when it
    /// needs `room` bytes of memory quota or more, events are dropped and counted.
    fn push_event(&mut self, path: &str, token: &str, bound: usize, room: usize) {
        if self.broken {
            return;
        }
        let Ok(p) = Path::new(path) else { return };
        let ev = Response::WatchEvent {
            path: p,
            token: token.to_string(),
        };
        let Ok(msg) = ev.to_message(0, 0) else { return };
        if !path.starts_with('@')
            && self
                .outbox
                .iter()
                .any(|m| m.header.ty == MsgType::WatchEvent.as_u32() && m.payload == msg.payload)
        {
            return;
        }
        if self.outbox.len() >= bound || msg_mem(&msg) >= room {
            self.dropped_events = self.dropped_events.saturating_add(1);
            return;
        }
        self.out_bytes = self.out_bytes.saturating_add(msg_mem(&msg));
        self.outbox.push_back(msg);
    }
}

/// The in-memory xenstored. See the [module docs](super) for the rules it follows.
#[derive(Debug)]
pub struct Store {
    q: Quotas,
    tree: Tree,
    doms: Domains,
    /// The global generation count (`generation` in xenstored_transaction.c).
    gen: u64,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    /// Permissions of `@introduceDomain` and `@releaseDomain` (4.17 keeps them apart from
    /// the tree: `dom_introduce_perms`, `dom_release_perms` in xenstored_domain.c).
    special: [Vec<NodePerm>; 2],
    notices: VecDeque<Notice>,
}

/// Types only privileged connections may send (`XS_FLAG_PRIV` in `wire_funcs[]`).
fn privileged_only(ty: MsgType) -> bool {
    matches!(
        ty,
        MsgType::Control
            | MsgType::Introduce
            | MsgType::Release
            | MsgType::IsDomainIntroduced
            | MsgType::Resume
            | MsgType::SetTarget
    )
}

const SPECIAL_NAMES: [&str; 2] = [INTRODUCE_DOMAIN, RELEASE_DOMAIN];

fn special_index(name: &str) -> Option<usize> {
    SPECIAL_NAMES.iter().position(|s| *s == name)
}

fn dom0_only() -> Vec<NodePerm> {
    alloc::vec![NodePerm {
        access: Access::None,
        domid: 0,
        ignore: false,
    }]
}

impl Store {
    /// A store holding what xenstored creates at start (`setup_structure()`): `/`, `/tool`
    /// and `/tool/xenstored`, all `n0`. `/local/domain/...` is the toolstack's business.
    pub fn new(quotas: Quotas) -> Store {
        let mut tree = Tree::new();
        let mut gen = 0u64;
        for (p, child) in [
            ("/", Some("tool")),
            ("/tool", Some("xenstored")),
            ("/tool/xenstored", None),
        ] {
            gen += 1;
            let mut n = Node::new(0, Access::None);
            n.generation = gen;
            if let Some(c) = child {
                n.children.push(c.to_string());
            }
            tree.insert(p.to_string(), n);
        }
        Store {
            q: quotas,
            tree,
            doms: Domains::default(),
            gen,
            conns: BTreeMap::new(),
            next_conn: 1,
            special: [dom0_only(), dom0_only()],
            notices: VecDeque::new(),
        }
    }

    /// The quotas in force.
    pub fn quotas(&self) -> &Quotas {
        &self.q
    }

    // -----------------------------------------------------------------------------------------
    // Connections.

    fn new_conn(&mut self, domid: DomId, domain: bool) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn = self.next_conn.saturating_add(1);
        self.conns.insert(id, Conn::new(domid, domain));
        id
    }

    /// Open a connection for `domid`. For dom0 this is a new privileged connection, like a
    /// toolstack process connecting to xenstored's Unix socket (each call gives another one).
    /// For any other domain it is that domain's ring connection: the domain is created if the
    /// store did not know it, and introduced (firing `@introduceDomain`) if it was not; a
    /// domain has one connection, so calling again returns the same id.
    pub fn connect(&mut self, domid: DomId) -> ConnId {
        if domid == 0 {
            return self.new_conn(0, false);
        }
        self.create_domain(domid);
        match self.introduce(domid, 0, 0) {
            Ok(Some(id)) => id,
            // Cannot happen (the domain exists and is not dom0); stay total anyway.
            _ => self.new_conn(domid, true),
        }
    }

    /// Close a connection: its watches, transactions and queued output are dropped
    /// (`destroy_conn()`). A domain's ring connection closed this way leaves the domain
    /// introduced (as xenstored's `ignore_connection()` does); a later
    /// [`Store::introduce_domain`] gives it a fresh connection.
    pub fn disconnect(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            self.doms.mem_sub(c.domid, c.memory());
            if c.domain {
                if let Some(d) = self.doms.map.get_mut(&c.domid) {
                    if d.conn == Some(conn) {
                        d.conn = None;
                    }
                }
            }
        }
    }

    /// Is `conn` open?
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The domain a connection speaks for.
    pub fn conn_domid(&self, conn: ConnId) -> Option<DomId> {
        self.conns.get(&conn).map(|c| c.domid)
    }

    /// Has the connection been cut off for not reading its replies (see
    /// [`Quotas::outbox`])? A transport should then drop it.
    pub fn is_broken(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.broken)
    }

    /// Backpressure: false while `conn` has [`Quotas::outbox`] or more messages queued, or
    /// its domain holds [`Quotas::memory`] bytes or more (xenstored's `domain_can_read()`
    /// stops reading such a domain's ring), or it is closed or broken. A transport should stop
    /// reading requests from a connection that does not want input until it has taken its
    /// output.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| {
            !c.broken
                && c.outbox.len() < self.q.outbox
                && !self.doms.mem_refused(c.domid, 0, 0, self.q.memory)
        })
    }

    /// Take everything queued for `conn`: replies in request order, and watch events (for any
    /// watch of the connection, whoever caused them) in the order they fired.
    pub fn take_output(&mut self, conn: ConnId) -> Vec<Message> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        self.doms.mem_sub(c.domid, c.out_bytes);
        c.out_bytes = 0;
        c.outbox.drain(..).collect()
    }

    /// Messages queued for `conn`.
    pub fn pending_output(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.outbox.len())
    }

    /// Watch events dropped for `conn` because its queue was full.
    pub fn dropped_events(&self, conn: ConnId) -> u64 {
        self.conns.get(&conn).map_or(0, |c| c.dropped_events)
    }

    /// Take the notices for the transport (domains introduced and released).
    pub fn take_notices(&mut self) -> Vec<Notice> {
        self.notices.drain(..).collect()
    }

    fn who(&self, conn: ConnId) -> Result<Who, XsError> {
        let c = self.conns.get(&conn).ok_or(XsError::Einval)?;
        Ok(Who {
            privileged: c.privileged(),
            domid: c.domid,
            target: self.doms.target(c.domid),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Inspection (for tests and tools; no permission checks).

    /// A node's value, if it exists.
    pub fn value(&self, path: &str) -> Option<&[u8]> {
        self.tree.get(path).map(|n| n.value.as_slice())
    }

    /// A node's permissions as `GET_PERMS` would show them to dom0.
    pub fn perms(&self, path: &str) -> Option<Perms> {
        let mut n = self.tree.get(path)?.clone();
        self.doms.adjust(&mut n);
        to_perms(&n.perms).ok()
    }

    /// A node's children, in `DIRECTORY` order.
    pub fn children(&self, path: &str) -> Option<Vec<String>> {
        self.tree.get(path).map(|n| n.children.clone())
    }

    /// How many nodes the tree holds (including `/`).
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    /// Nodes owned by `domid`, as counted for its quota.
    pub fn nodes_owned(&self, domid: DomId) -> usize {
        self.doms.nbentry(domid)
    }

    /// Bytes accounted to `domid` for the memory quota ([`Quotas::memory`]); 0 for dom0 and
    /// domains the store does not know.
    pub fn memory_used(&self, domid: DomId) -> usize {
        self.doms.memory(domid)
    }

    /// Is the domain introduced?
    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.doms.introduced(domid)
    }

    /// Verify the store's invariants (for tests and fuzzing): `/` exists; every other node's
    /// parent exists and lists it exactly once; every listed child exists and has a valid
    /// name; each known domain's node count equals the nodes it (effectively) owns, and its
    /// memory count what its nodes, watches, transaction copies and queued output take; no
    /// queue exceeds its bound. Returns the first violation found.
    pub fn check_consistency(&self) -> Result<(), String> {
        if !self.tree.contains_key("/") {
            return Err("no root node".into());
        }
        let mut owned: BTreeMap<DomId, usize> = BTreeMap::new();
        let mut mem: BTreeMap<DomId, usize> = BTreeMap::new();
        for c in self.conns.values() {
            let have: usize = c.outbox.iter().map(msg_mem).sum();
            if have != c.out_bytes {
                return Err(format!(
                    "domain {}: output counted {} bytes, holds {have}",
                    c.domid, c.out_bytes
                ));
            }
            *mem.entry(c.domid).or_default() += c.memory();
        }
        for (p, n) in &self.tree {
            if n.perms.is_empty() {
                return Err(format!("{p}: no permissions"));
            }
            for (i, c) in n.children.iter().enumerate() {
                if !path::is_valid_leaf(c.as_bytes()) {
                    return Err(format!("{p}: bad child name {c:?}"));
                }
                if n.children.iter().skip(i + 1).any(|d| d == c) {
                    return Err(format!("{p}: child {c} listed twice"));
                }
                let cp = super::node::child_path(p, c);
                if !self.tree.contains_key(&cp) {
                    return Err(format!("{p}: lists missing child {c}"));
                }
            }
            if p != "/" {
                let name = super::node::basename(p);
                match self.tree.get(parent(p)) {
                    None => return Err(format!("{p}: parent missing")),
                    Some(pn) if !pn.children.iter().any(|c| c == name) => {
                        return Err(format!("{p}: not listed by its parent"))
                    }
                    Some(_) => {}
                }
            }
            let mut a = n.clone();
            self.doms.adjust(&mut a);
            *owned.entry(a.owner()).or_default() += 1;
            *mem.entry(a.owner()).or_default() += node_mem(p, n);
        }
        for (d, dom) in &self.doms.map {
            let have = owned.get(d).copied().unwrap_or(0);
            if dom.nbentry != have {
                return Err(format!(
                    "domain {d}: counted {} nodes, owns {have}",
                    dom.nbentry
                ));
            }
            let have = mem.get(d).copied().unwrap_or(0);
            if dom.memory != have {
                return Err(format!(
                    "domain {d}: counted {} bytes of memory, holds {have}",
                    dom.memory
                ));
            }
        }
        for (id, c) in &self.conns {
            if c.outbox.len() > self.q.outbox.saturating_mul(2) {
                return Err(format!("connection {id:?}: {} queued", c.outbox.len()));
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The toolstack's entry points (what `xc_domain_getinfo()` and VIRQ_DOM_EXC tell xenstored).

    /// The domain now exists (was created in the hypervisor). Permission entries naming it are
    /// honoured on nodes written from now on. Idempotent; dom0 always exists.
    pub fn create_domain(&mut self, domid: DomId) {
        if domid == 0 {
            return;
        }
        if self.doms.map.contains_key(&domid) {
            return;
        }
        // A fresh generation, so that no node written before (naming an earlier holder of
        // the domid) can pass for one written for this domain. xenstored takes the current
        // count without incrementing; a node written just before would then count as the new
        // domain's (the fuzz target found the resulting quota miscount).
        self.gen = self.gen.saturating_add(1);
        self.doms.map.insert(domid, Domain::new(self.gen));
    }

    /// Introduce a domain (what `XS_INTRODUCE` does, creating the domain first if needed):
    /// returns its ring connection. The first introduction fires `@introduceDomain`; a
    /// repeated one only re-binds (`introduce_domain()`; checked: no second event).
    pub fn introduce_domain(&mut self, domid: DomId) -> Result<ConnId, XsError> {
        self.create_domain(domid);
        match self.introduce(domid, 0, 0)? {
            Some(id) => Ok(id),
            None => Err(XsError::Einval),
        }
    }

    /// Release a domain (what `XS_RELEASE` does): see [`Store::destroy_domain`] minus the
    /// forgetting. `EINVAL` for dom0, `ENOENT` if not introduced.
    pub fn release_domain(&mut self, domid: DomId) -> Result<(), XsError> {
        if domid == 0 {
            return Err(XsError::Einval);
        }
        if !self.doms.introduced(domid) {
            return Err(XsError::Enoent);
        }
        self.release(domid);
        Ok(())
    }

    /// The domain died (VIRQ_DOM_EXC and `xc_domain_getinfo()` reporting it dying;
    /// `domain_cleanup()`). If it was introduced: its connection goes (watches, transactions
    /// and output dropped, a [`Notice::Released`] queued), every node it owns is removed
    /// (unless [`Quotas::keep_orphans`]), firing watches as `XS_RM` would, and
    /// `@releaseDomain` fires (checked: `/local/domain/N` and N's nodes elsewhere are
    /// removed, then `@releaseDomain` fires). Then the store forgets the domain, so
    /// permission entries naming its domid are ignored from now on even if a new domain gets
    /// the same domid.
    pub fn destroy_domain(&mut self, domid: DomId) {
        if domid == 0 {
            return;
        }
        if self.doms.introduced(domid) {
            self.release(domid);
        }
        self.doms.map.remove(&domid);
    }

    /// The domain shut down (or crashed) but is not dead yet: `@releaseDomain` fires once,
    /// until `XS_RESUME` (`domain_cleanup()`'s `shutdown` flag). Nothing is removed.
    pub fn shutdown_domain(&mut self, domid: DomId) {
        let fire = match self.doms.map.get_mut(&domid) {
            Some(d) if d.introduced && !d.shutdown => {
                d.shutdown = true;
                true
            }
            _ => false,
        };
        if fire {
            self.fire_special(RELEASE_DOMAIN);
        }
    }

    /// `introduce_domain()`: `None` for dom0 (its introduction is accepted and ignored).
    fn introduce(
        &mut self,
        domid: DomId,
        mfn: u64,
        port: EvtchnPort,
    ) -> Result<Option<ConnId>, XsError> {
        if domid == 0 {
            return Ok(None);
        }
        let (introduced, conn) = match self.doms.map.get(&domid) {
            None => return Err(XsError::Einval),
            Some(d) => (d.introduced, d.conn.filter(|c| self.conns.contains_key(c))),
        };
        let id = match conn {
            Some(id) => id,
            None => self.new_conn(domid, true),
        };
        if let Some(d) = self.doms.map.get_mut(&domid) {
            d.introduced = true;
            d.conn = Some(id);
            d.mfn = mfn;
            d.port = port;
            if !introduced {
                d.shutdown = false;
            }
        }
        self.notices.push_back(Notice::Introduced {
            domid,
            conn: id,
            mfn,
            port,
            new: conn.is_none(),
        });
        if !introduced {
            self.fire_special(INTRODUCE_DOMAIN);
        }
        Ok(Some(id))
    }

    /// `do_release()` / `destroy_domain()` for an introduced domain.
    fn release(&mut self, domid: DomId) {
        let conn = self.doms.map.get_mut(&domid).and_then(|d| {
            d.introduced = false;
            d.shutdown = false;
            d.target = None;
            d.conn.take()
        });
        if let Some(id) = conn {
            // "Avoid triggering watch events when the domain's nodes are deleted."
            if let Some(c) = self.conns.remove(&id) {
                self.doms.mem_sub(c.domid, c.memory());
                self.notices.push_back(Notice::Released { domid, conn: id });
            }
        }
        self.remove_owned(domid);
        self.fire_special(RELEASE_DOMAIN);
    }

    /// `domain_tree_remove()`: walk the tree from `/` in children order; remove each subtree
    /// whose root the domain owns (or, keeping orphans, give such nodes to dom0).
    fn remove_owned(&mut self, domid: DomId) {
        let mut stack: Vec<String> = alloc::vec!["/".to_string()];
        let mut owned: Vec<String> = Vec::new();
        while let Some(p) = stack.pop() {
            let Some(node) = self.tree.get(&p) else {
                continue;
            };
            let owner = if self.doms.valid_for(node.owner(), node.generation) {
                node.owner()
            } else {
                0
            };
            let descend = if owner == domid && p != "/" {
                if self.q.keep_orphans {
                    if let Some(n) = self.tree.get_mut(&p) {
                        self.doms.mem_sub(domid, node_mem(&p, n));
                        if let Some(o) = n.perms.first_mut() {
                            o.domid = 0;
                        }
                    }
                    self.doms.add_entries(domid, -1);
                    true
                } else {
                    owned.push(p.clone());
                    false
                }
            } else {
                true
            };
            if descend {
                if let Some(n) = self.tree.get(&p) {
                    for c in n.children.iter().rev() {
                        stack.push(super::node::child_path(&p, c));
                    }
                }
            }
        }
        let root = Who {
            privileged: true,
            domid: 0,
            target: None,
        };
        for p in owned {
            if !self.tree.contains_key(&p) {
                continue;
            }
            let mut op = Op {
                tree: &mut self.tree,
                doms: &mut self.doms,
                gen: &mut self.gen,
                tx: None,
                who: root,
                q: &self.q,
                fires: Vec::new(),
            };
            let _ = op.rm_node(&p);
            let fires = core::mem::take(&mut op.fires);
            self.deliver(fires);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Watch delivery.

    fn deliver(&mut self, fires: Vec<Fire>) {
        for f in fires {
            self.fire(&f.path, f.exact, &f.perms);
        }
    }

    fn fire_special(&mut self, name: &str) {
        self.fire(name, false, &[]);
    }

    /// `fire_watches()`: every connection (in connection order) whose domain may read the
    /// node, its parent, or the old permissions (`watch_permitted()`) — or, for `@` special
    /// events, whose domain the special name's permissions let read (`check_perms_special()`;
    /// checked: a domU hears `@introduceDomain` only once dom0 grants it read) — gets one event
    /// per matching watch, in watch registration order.
    fn fire(&mut self, name: &str, exact: bool, perms: &[Vec<NodePerm>]) {
        let special = if name.starts_with('@') {
            match special_index(name).and_then(|i| self.special.get(i)) {
                Some(p) => Some(p),
                None => return,
            }
        } else {
            None
        };
        let bound = self.q.outbox;
        let quota = self.q.memory;
        for conn in self.conns.values_mut() {
            if conn.broken || conn.watches.is_empty() {
                continue;
            }
            let who = Who {
                privileged: conn.privileged(),
                domid: conn.domid,
                target: self.doms.target(conn.domid),
            };
            let allowed = match special {
                Some(sp) => perm_for(&who, sp) & PERM_READ != 0,
                None => perms.iter().any(|p| perm_for(&who, p) & PERM_READ != 0),
            };
            if !allowed {
                continue;
            }
            let prefix = format!("{}/", path::domain_path(conn.domid));
            let events: Vec<(String, String)> = conn
                .watches
                .iter()
                .filter(|w| watch_matches(name, &w.node, exact))
                .map(|w| {
                    let p = if w.relative {
                        name.strip_prefix(prefix.as_str()).unwrap_or(name)
                    } else {
                        name
                    };
                    (p.to_string(), w.token.clone())
                })
                .collect();
            for (p, t) in events {
                let before = conn.out_bytes;
                conn.push_event(&p, &t, bound, self.doms.mem_room(conn.domid, quota));
                self.doms
                    .mem_add(conn.domid, conn.out_bytes.saturating_sub(before));
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Requests.

    /// Handle one request from `conn`. The reply, and any watch events it causes (for this or
    /// other connections), are queued; fetch them with [`Store::take_output`]. Never panics;
    /// a malformed request gets an `XS_ERROR` reply with the error xenstored gives, and the
    /// connection stays usable. Unknown or closed connections are ignored.
    pub fn handle(&mut self, conn: ConnId, msg: &Message) {
        match self.conns.get(&conn) {
            Some(c) if !c.broken => {}
            _ => return,
        }
        let hdr = msg.header;
        if let Err(e) = self.process(conn, msg) {
            self.send_error(conn, &hdr, e);
        }
    }

    fn send_error(&mut self, conn: ConnId, hdr: &Header, e: XsError) {
        if let Ok(m) = Response::Error(e).to_message(hdr.req_id, hdr.tx_id) {
            self.push_reply(conn, m);
        }
    }

    /// Queue a reply. One with more than 16 bytes of payload that the domain's memory quota
    /// cannot take becomes `ENOMEM` (`send_reply()`; checked: a domU near its quota reading a
    /// 1000-byte node gets `ENOMEM`).
    fn push_reply(&mut self, conn: ConnId, msg: Message) {
        let bound = self.q.outbox;
        let quota = self.q.memory;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut msg = msg;
        if msg.payload.len() > SMALL_REPLY
            && self.doms.mem_refused(c.domid, msg_mem(&msg), 0, quota)
        {
            match Response::Error(XsError::Enomem).to_message(msg.header.req_id, msg.header.tx_id) {
                Ok(m) => msg = m,
                Err(_) => return,
            }
        }
        let before = c.out_bytes;
        c.push_reply(msg, bound);
        self.doms.mem_sub(c.domid, before);
        self.doms.mem_add(c.domid, c.out_bytes);
    }

    /// `send_reply()`: a reply longer than `XENSTORE_PAYLOAD_MAX` becomes `E2BIG` (checked:
    /// `DIRECTORY` of a node whose children list is over 4096 bytes).
    fn reply(&mut self, conn: ConnId, hdr: &Header, rsp: Response) -> Result<(), XsError> {
        let m = rsp
            .to_message(hdr.req_id, hdr.tx_id)
            .map_err(|e| e.xs_error())?;
        self.push_reply(conn, m);
        Ok(())
    }

    fn reply_raw(
        &mut self,
        conn: ConnId,
        hdr: &Header,
        ty: MsgType,
        payload: Vec<u8>,
    ) -> Result<(), XsError> {
        let m = Message::new(ty, hdr.req_id, hdr.tx_id, payload).map_err(|e| e.xs_error())?;
        self.push_reply(conn, m);
        Ok(())
    }

    fn ack(&mut self, conn: ConnId, hdr: &Header, ty: MsgType) -> Result<(), XsError> {
        self.reply(conn, hdr, Response::Ok(ty))
    }

    /// `canonicalize()`: resolve a relative path against `/local/domain/<domid>` and apply the
    /// path-length quota (`EINVAL`).
    fn canon(&self, domid: DomId, p: &Path) -> Result<String, XsError> {
        let abs = p.resolve(domid);
        if abs.quota_len() > self.q.path_max {
            return Err(XsError::Einval);
        }
        Ok(abs.as_str().to_string())
    }

    /// Run a node operation for `conn`, in transaction `txid` (0: none), then deliver the
    /// events it fired.
    fn with_op<R>(
        &mut self,
        conn: ConnId,
        txid: u32,
        f: impl FnOnce(&mut Op<'_>) -> Result<R, XsError>,
    ) -> Result<R, XsError> {
        let who = self.who(conn)?;
        let tx = if txid == 0 {
            None
        } else {
            Some(
                self.conns
                    .get_mut(&conn)
                    .and_then(|c| c.txs.get_mut(&txid))
                    .ok_or(XsError::Enoent)?,
            )
        };
        let mut op = Op {
            tree: &mut self.tree,
            doms: &mut self.doms,
            gen: &mut self.gen,
            tx,
            who,
            q: &self.q,
            fires: Vec::new(),
        };
        let r = f(&mut op);
        let fires = core::mem::take(&mut op.fires);
        self.deliver(fires);
        r
    }

    /// `process_message()`: the checks in xenstored's order — unknown type (`ENOSYS`),
    /// privileged-only type from an unprivileged connection (`EACCES`), unknown transaction id
    /// (`ENOENT`; `WATCH` and `UNWATCH` ignore the id), then the payload (`EINVAL`), then the
    /// operation.
    fn process(&mut self, conn: ConnId, msg: &Message) -> Result<(), XsError> {
        if msg.payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(CodecError::PayloadTooLarge {
                len: msg.payload.len(),
            }
            .xs_error());
        }
        if usize::try_from(msg.header.len).ok() != Some(msg.payload.len()) {
            return Err(XsError::Einval);
        }
        let ty = match msg.msg_type() {
            Ok(t) if t.is_request() => t,
            Ok(t) => return Err(CodecError::NotARequest(t).xs_error()),
            Err(e) => return Err(e.xs_error()),
        };
        let who = self.who(conn)?;
        if privileged_only(ty) && !who.privileged {
            return Err(XsError::Eacces);
        }
        let txid = match ty {
            MsgType::Watch | MsgType::Unwatch => 0,
            _ => msg.header.tx_id,
        };
        if txid != 0
            && !self
                .conns
                .get(&conn)
                .is_some_and(|c| c.txs.contains_key(&txid))
        {
            return Err(XsError::Enoent);
        }
        // xenstored ignores the payload of these two; the codec insists on exactly "\0".
        let req = match ty {
            MsgType::TransactionStart => Request::TransactionStart,
            MsgType::ResetWatches => Request::ResetWatches,
            _ => match Request::decode(ty, &msg.payload) {
                Ok(r) => r,
                // 4.17's do_unwatch() does not validate the path, it only looks for a watch
                // with that path and token: an invalid one matches none (checked: UNWATCH of
                // `/a//b` or `/a/..` is ENOENT).
                Err(CodecError::Path(_) | CodecError::NotUtf8) if ty == MsgType::Unwatch => {
                    return Err(XsError::Enoent)
                }
                Err(e) => return Err(e.xs_error()),
            },
        };
        let hdr = msg.header;
        let domid = who.domid;
        match req {
            Request::Read(p) => {
                let path = self.canon(domid, &p)?;
                let v = self.with_op(conn, txid, |op| op.read_value(&path))?;
                self.reply(conn, &hdr, Response::Read(v))
            }
            Request::Directory(p) => {
                let path = self.canon(domid, &p)?;
                let v = self.with_op(conn, txid, |op| op.directory(&path))?;
                self.reply(conn, &hdr, Response::Directory(v))
            }
            Request::DirectoryPart { path: p, offset } => {
                let path = self.canon(domid, &p)?;
                let v = self.with_op(conn, txid, |op| op.directory_part(&path, offset))?;
                self.reply_raw(conn, &hdr, MsgType::DirectoryPart, v)
            }
            Request::GetPerms(p) => {
                // 4.17 answers EINVAL for the special names (checked), newer daemons show them.
                if p.is_special() {
                    return Err(XsError::Einval);
                }
                let path = self.canon(domid, &p)?;
                let v = self.with_op(conn, txid, |op| op.get_perms(&path))?;
                let perms = to_perms(&v).map_err(|_| XsError::Einval)?;
                self.reply(conn, &hdr, Response::GetPerms(perms))
            }
            Request::Write { path: p, value } => {
                let path = self.canon(domid, &p)?;
                self.with_op(conn, txid, |op| op.write_value(&path, value))?;
                self.ack(conn, &hdr, MsgType::Write)
            }
            Request::Mkdir(p) => {
                let path = self.canon(domid, &p)?;
                self.with_op(conn, txid, |op| op.mkdir(&path))?;
                self.ack(conn, &hdr, MsgType::Mkdir)
            }
            Request::Rm(p) => {
                let path = self.canon(domid, &p)?;
                self.with_op(conn, txid, |op| op.rm(&path))?;
                self.ack(conn, &hdr, MsgType::Rm)
            }
            Request::SetPerms { path: p, perms } => {
                self.set_perms(conn, txid, &who, &p, &perms)?;
                self.ack(conn, &hdr, MsgType::SetPerms)
            }
            Request::Watch { path: p, token } => self.watch(conn, &hdr, &p, token),
            Request::Unwatch { path: p, token } => {
                let node = self.canon(domid, &p)?;
                let c = self.conns.get_mut(&conn).ok_or(XsError::Einval)?;
                let i = c
                    .watches
                    .iter()
                    .position(|w| w.node == node && w.token == token)
                    .ok_or(XsError::Enoent)?;
                let w = c.watches.remove(i);
                self.doms.mem_sub(c.domid, w.mem());
                self.ack(conn, &hdr, MsgType::Unwatch)
            }
            Request::TransactionStart => self.transaction_start(conn, &hdr, &who, txid),
            Request::TransactionEnd { commit } => {
                if txid == 0 {
                    return Err(XsError::Enoent);
                }
                let tx = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| c.txs.remove(&txid))
                    .ok_or(XsError::Enoent)?;
                // The copies go (at commit into the tree, to the nodes' owners).
                self.doms.mem_sub(domid, tx.memory());
                if commit {
                    self.commit(&who, tx)?;
                }
                self.ack(conn, &hdr, MsgType::TransactionEnd)
            }
            Request::Introduce {
                domid: d,
                mfn,
                port,
            } => {
                // The domain must exist ("introduce non-existing 6" → EINVAL, checked).
                if d != 0 && !self.doms.exists(d) {
                    return Err(XsError::Einval);
                }
                self.introduce(d, mfn, port)?;
                self.ack(conn, &hdr, MsgType::Introduce)
            }
            Request::Release(d) => {
                self.release_domain(d)?;
                self.ack(conn, &hdr, MsgType::Release)
            }
            Request::GetDomainPath(d) => {
                let p = Path::new(&path::domain_path(d)).map_err(|_| XsError::Einval)?;
                self.reply(conn, &hdr, Response::GetDomainPath(p))
            }
            Request::IsDomainIntroduced(d) => {
                let v = self.doms.introduced(d);
                self.reply(conn, &hdr, Response::IsDomainIntroduced(v))
            }
            Request::Resume(d) => {
                if d == 0 {
                    return Err(XsError::Einval);
                }
                match self.doms.map.get_mut(&d) {
                    Some(dom) if dom.introduced => dom.shutdown = false,
                    _ => return Err(XsError::Enoent),
                }
                self.ack(conn, &hdr, MsgType::Resume)
            }
            Request::SetTarget { domid: d, target } => {
                // Both must be connected domains (`find_connected_domain()`; checked).
                if !self.doms.introduced(d) || !self.doms.introduced(target) {
                    return Err(XsError::Enoent);
                }
                if let Some(dom) = self.doms.map.get_mut(&d) {
                    dom.target = Some(target);
                }
                self.ack(conn, &hdr, MsgType::SetTarget)
            }
            Request::ResetWatches => {
                // `do_reset_watches()` drops the transactions too (checked).
                if let Some(c) = self.conns.get_mut(&conn) {
                    let held = c.memory().saturating_sub(c.out_bytes);
                    self.doms.mem_sub(c.domid, held);
                    c.watches.clear();
                    c.txs.clear();
                }
                self.ack(conn, &hdr, MsgType::ResetWatches)
            }
            Request::Control { command, params } => {
                let out = self.control(&command, &params)?;
                self.reply(conn, &hdr, Response::Control(out))
            }
        }
    }

    /// `do_set_perms()`: more entries than the quota (`ENOSPC`, unprivileged only), an owner
    /// that does not exist (`ENOENT`, checked: `n9` for a domain 9 that does not exist), then
    /// the special names (write + owner permission on them needed, `EACCES`; no event,
    /// checked; a domU may not change the owner, `EPERM`), then the node.
    fn set_perms(
        &mut self,
        conn: ConnId,
        txid: u32,
        who: &Who,
        p: &Path,
        perms: &Perms,
    ) -> Result<(), XsError> {
        if !who.privileged && perms.entries().len() > self.q.perms_per_node {
            return Err(XsError::Enospc);
        }
        let mut entries: Vec<NodePerm> = perms.entries().iter().map(NodePerm::from_perm).collect();
        self.doms.flag_missing(&mut entries);
        if entries.first().is_none_or(|o| o.ignore) {
            return Err(XsError::Enoent);
        }
        if p.is_special() {
            // 4.17 aborts (an assertion in consider_message()) on an unknown special name;
            // we answer ENOENT, as later xenstored versions do.
            let i = special_index(p.as_str()).ok_or(XsError::Enoent)?;
            let cur = self.special.get(i).ok_or(XsError::Enoent)?;
            let need = PERM_WRITE | PERM_OWNER;
            if perm_for(who, cur) & need != need {
                return Err(XsError::Eacces);
            }
            // As for nodes, an unprivileged owner may not give it away (4.17 aborts here
            // instead; later daemons, which keep the special names as nodes, say EPERM).
            let owner = |v: &[NodePerm]| v.first().map(|p| p.domid);
            if !who.privileged && owner(&entries) != owner(cur) {
                return Err(XsError::Eperm);
            }
            if let Some(slot) = self.special.get_mut(i) {
                *slot = entries;
            }
            return Ok(());
        }
        let path = self.canon(who.domid, p)?;
        self.with_op(conn, txid, |op| op.set_perms(&path, entries))
    }

    /// `do_watch()`: duplicate path + token `EEXIST`; an unprivileged connection that already
    /// has more than the quota `E2BIG`; the reply, then the initial event with the path as
    /// given (sent whatever the permissions: "We fire once up front").
    fn watch(
        &mut self,
        conn: ConnId,
        hdr: &Header,
        p: &Path,
        token: String,
    ) -> Result<(), XsError> {
        let who = self.who(conn)?;
        // Special names pass through unchanged (and count whole against the path quota).
        let node = self.canon(who.domid, p)?;
        let quota = self.q.watches;
        let c = self.conns.get_mut(&conn).ok_or(XsError::Einval)?;
        if c.watches.iter().any(|w| w.node == node && w.token == token) {
            return Err(XsError::Eexist);
        }
        if !who.privileged && c.watches.len() > quota {
            return Err(XsError::E2big);
        }
        let w = Watch {
            node,
            token: token.clone(),
            relative: p.is_relative(),
        };
        // `add_watch()`: the memory quota (checked: ENOMEM).
        if self.doms.mem_refused(c.domid, w.mem(), 0, self.q.memory) {
            return Err(XsError::Enomem);
        }
        self.doms.mem_add(c.domid, w.mem());
        c.watches.push(w);
        self.ack(conn, hdr, MsgType::Watch)?;
        let bound = self.q.outbox;
        if let Some(c) = self.conns.get_mut(&conn) {
            let before = c.out_bytes;
            c.push_event(
                p.as_str(),
                &token,
                bound,
                self.doms.mem_room(c.domid, self.q.memory),
            );
            self.doms
                .mem_add(c.domid, c.out_bytes.saturating_sub(before));
        }
        Ok(())
    }

    /// `do_transaction_start()`: `EBUSY` inside a transaction (no nesting, checked);
    /// `ENOSPC` when an unprivileged connection already has more than the quota open.
    /// Transaction ids count up from 1 per connection, skipping ids in use (and 0).
    fn transaction_start(
        &mut self,
        conn: ConnId,
        hdr: &Header,
        who: &Who,
        txid: u32,
    ) -> Result<(), XsError> {
        if txid != 0 {
            return Err(XsError::Ebusy);
        }
        let quota = self.q.transactions;
        let c = self.conns.get_mut(&conn).ok_or(XsError::Einval)?;
        if !who.privileged && c.txs.len() > quota {
            return Err(XsError::Enospc);
        }
        let mut id = c.next_tx;
        // At most txs.len() + 1 candidates are in use or zero.
        for _ in 0..=c.txs.len().saturating_add(1) {
            if id != 0 && !c.txs.contains_key(&id) {
                break;
            }
            id = id.wrapping_add(1);
        }
        c.next_tx = id.wrapping_add(1);
        c.txs.insert(id, Transaction::default());
        self.reply(conn, hdr, Response::TransactionStart(id))
    }

    /// `do_transaction_end("T")` + `finalize_transaction()`: see [`super::txn`].
    fn commit(&mut self, who: &Who, tx: Transaction) -> Result<(), XsError> {
        if tx.fail {
            return Err(XsError::Enomem);
        }
        if !who.privileged && tx.node_created {
            for (&d, &delta) in &tx.nb_delta {
                let have = i64::try_from(self.doms.nbentry(d)).unwrap_or(i64::MAX);
                let quota = i64::try_from(self.q.nodes).unwrap_or(i64::MAX);
                if have.saturating_add(delta) >= quota {
                    return Err(XsError::Enospc);
                }
            }
        }
        for path in &tx.order {
            let Some(e) = tx.entries.get(path) else {
                continue;
            };
            if self.tree.get(path).map(|n| n.generation) != e.generation {
                return Err(XsError::Eagain);
            }
        }
        let Transaction {
            mut entries,
            order,
            nb_delta,
            ..
        } = tx;
        let mut fires: Vec<(String, bool, Option<Vec<NodePerm>>)> = Vec::new();
        for path in order {
            let Some(e) = entries.remove(&path) else {
                continue;
            };
            if !e.modified {
                continue;
            }
            match e.local {
                Some(mut n) => {
                    self.gen = self.gen.saturating_add(1);
                    n.generation = self.gen;
                    tree_put(&mut self.tree, &mut self.doms, &path, Some(n));
                }
                None => {
                    if e.generation.is_some() {
                        tree_put(&mut self.tree, &mut self.doms, &path, None);
                    }
                }
            }
            if let Some(exact) = e.fire {
                fires.push((path, exact, e.old_perms));
            }
        }
        for (d, delta) in nb_delta {
            self.doms.add_entries(d, delta);
        }
        for (path, exact, old) in fires {
            let mut perms: Vec<Vec<NodePerm>> = Vec::new();
            if let Some(o) = old {
                perms.push(o);
            }
            if let Some(n) = self.live(&path) {
                perms.push(n.perms);
                if let Some(pn) = self.live(parent(&path)) {
                    perms.push(pn.perms);
                }
            }
            self.fire(&path, exact, &perms);
        }
        Ok(())
    }

    fn live(&self, path: &str) -> Option<Node> {
        let mut n = self.tree.get(path)?.clone();
        self.doms.adjust(&mut n);
        Some(n)
    }

    /// `XS_CONTROL` (privileged only): a minimal subset of xenstored's commands — `help`,
    /// `check` and `log` (`OK`), `print <string>` (`OK`; `EINVAL` without the string),
    /// `quota` (the limits in force); anything else `EINVAL`, as xenstored answers an unknown
    /// command (checked).
    fn control(&self, command: &str, params: &[u8]) -> Result<Vec<u8>, XsError> {
        let ok = b"OK\0".to_vec();
        match command {
            "help" => Ok(b"check\t\nlog\ton|off\nprint\t<string>\nquota\t\nhelp\t\n\0".to_vec()),
            "check" | "log" => Ok(ok),
            "print" => {
                if params.is_empty() {
                    Err(XsError::Einval)
                } else {
                    Ok(ok)
                }
            }
            "quota" => {
                let q = &self.q;
                let mut s = format!(
                    "Quota settings:\nnodes            : {:>8} Nodes per domain\nwatches          : {:>8} Watches per domain\ntransactions     : {:>8} Transactions per domain\nnode-size        : {:>8} Max. size of a node\npermissions      : {:>8} Max. number of permissions per node\npath-max         : {:>8} Max. length of a node path\ntransaction-nodes: {:>8} Max. number of accessed nodes per transaction\nmemory           : {:>8} Total Xenstore memory per domain (error level)\n",
                    q.nodes, q.watches, q.transactions, q.node_size, q.perms_per_node, q.path_max, q.transaction_nodes, q.memory
                )
                .into_bytes();
                s.push(0);
                Ok(s)
            }
            _ => Err(XsError::Einval),
        }
    }
}
