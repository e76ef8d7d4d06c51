//! The node operations, over the live tree or a transaction's view of it.
//!
//! Each function mirrors its C xenstored counterpart (Xen 4.17
//! `tools/xenstore/xenstored_core.c`; the same logic lives in 4.19's
//! `tools/xenstored/core.c`), named in its doc comment. Behaviour marked "checked" was
//! confirmed against Debian's xenstored 4.17 running under `ci/real-xenstored`.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::domain::Domains;
use super::node::{
    basename, child_path, node_mem, parent, perm_for, Node, NodePerm, Who, PERM_OWNER, PERM_READ,
    PERM_WRITE,
};
use super::quotas::Quotas;
use super::txn::{Transaction, TxEntry};
use crate::error::XsError;
use crate::wire::XENSTORE_PAYLOAD_MAX;
use crate::DomId;

/// The node tree: absolute path → node.
pub(crate) type Tree = BTreeMap<String, Node>;

/// Store `node` at `path` in the live tree (`None`: remove it), moving its memory-quota
/// bytes from the old node's effective owner to the new one's (`do_tdb_write()` /
/// `do_tdb_delete()`; no check here — callers check first where xenstored does).
pub(crate) fn tree_put(tree: &mut Tree, doms: &mut Domains, path: &str, node: Option<Node>) {
    let old = match node {
        Some(n) => {
            doms.mem_add(doms.effective_owner(&n), node_mem(path, &n));
            tree.insert(path.to_string(), n)
        }
        None => tree.remove(path),
    };
    if let Some(o) = old {
        doms.mem_sub(doms.effective_owner(&o), node_mem(path, &o));
    }
}

/// A watch event to fire: the changed path, whether only watches on exactly that path see it
/// (children of a removed subtree), and the permission lists of which any one readable by a
/// watcher's connection lets the event through (`watch_permitted()`: the node, its parent,
/// and for `SET_PERMS` the node's old permissions).
#[derive(Debug, Clone)]
pub(crate) struct Fire {
    pub path: String,
    pub exact: bool,
    pub perms: Vec<Vec<NodePerm>>,
}

/// One operation's access to the store: the live tree, or a transaction's view of it.
pub(crate) struct Op<'a> {
    pub tree: &'a mut Tree,
    pub doms: &'a mut Domains,
    pub gen: &'a mut u64,
    pub tx: Option<&'a mut Transaction>,
    pub who: Who,
    pub q: &'a Quotas,
    /// Events to deliver once the operation is done (outside transactions).
    pub fires: Vec<Fire>,
}

impl Op<'_> {
    /// `read_node()`: the node as this operation sees it, with stale permission entries
    /// adjusted (`domain_adjust_node_perms()`). Inside a transaction the first access records
    /// the node (`access_node()`), which fails with `ENOSPC` — and dooms the transaction —
    /// once an unprivileged transaction has touched `transaction_nodes` nodes (checked:
    /// with `-Q transaction-nodes=4` the fifth distinct node fails).
    pub fn read(&mut self, path: &str) -> Result<Option<Node>, XsError> {
        let node = match self.tx.as_deref_mut() {
            None => self.tree.get(path).cloned(),
            Some(tx) => {
                if let Some(e) = tx.entries.get(path) {
                    e.local.clone()
                } else {
                    if !self.who.privileged && tx.entries.len() >= self.q.transaction_nodes {
                        tx.fail = true;
                        return Err(XsError::Enospc);
                    }
                    let live = self.tree.get(path).map(|n| {
                        let mut n = n.clone();
                        self.doms.adjust(&mut n);
                        n
                    });
                    // The transaction's copy counts for the connection's domain, unchecked
                    // (`access_node()` writes it with `no_quota_check`).
                    if let Some(n) = &live {
                        self.doms.mem_add(self.who.domid, node_mem(path, n));
                    }
                    tx.entries.insert(
                        path.to_string(),
                        TxEntry {
                            generation: live.as_ref().map(|n| n.generation),
                            local: live.clone(),
                            modified: false,
                            fire: None,
                            old_perms: live.as_ref().map(|n| n.perms.clone()),
                        },
                    );
                    tx.order.push(path.to_string());
                    live
                }
            }
        };
        Ok(node.map(|mut n| {
            self.doms.adjust(&mut n);
            n
        }))
    }

    /// A node of the live tree (no transaction bookkeeping), adjusted.
    pub fn live(&self, path: &str) -> Option<Node> {
        self.tree.get(path).map(|n| {
            let mut n = n.clone();
            self.doms.adjust(&mut n);
            n
        })
    }

    fn perm(&self, node: &Node) -> u8 {
        perm_for(&self.who, &node.perms)
    }

    /// The node-size quota (`write_node_raw()`): unprivileged writers may not make a node's
    /// accounted size reach `node_size`.
    fn check_size(&self, node: &Node) -> Result<(), XsError> {
        if !self.who.privileged && node.acc_size() >= self.q.node_size {
            return Err(XsError::Enospc);
        }
        Ok(())
    }

    /// The memory quota (`do_tdb_write()` → `domain_memory_add_chk()`), before storing each
    /// of `writes` (path, new node): every domain the new nodes are accounted to — the owner,
    /// or inside a transaction the connection's domain — may not end up holding `>=`
    /// [`Quotas::memory`] bytes, counting what the replaced nodes give back (`EIO`). All
    /// writes of one request are checked together: xenstored checks them one by one in an
    /// order where each only adds, so the last one decides. A refusal inside a transaction
    /// dooms it (`write_node()` → `fail_transaction()`).
    fn check_memory(&mut self, writes: &[(&str, &Node)]) -> Result<(), XsError> {
        let quota = self.q.memory;
        if quota == 0 {
            return Ok(());
        }
        // domain -> (bytes added, bytes given back)
        let mut per: BTreeMap<DomId, (usize, usize)> = BTreeMap::new();
        let mut gaining: Vec<DomId> = Vec::new();
        for (path, new) in writes {
            if let Some((d, m)) = self.held(path) {
                let e = per.entry(d).or_default();
                e.1 = e.1.saturating_add(m);
            }
            let d = if self.tx.is_some() {
                self.who.domid
            } else {
                new.owner()
            };
            let e = per.entry(d).or_default();
            e.0 = e.0.saturating_add(node_mem(path, new));
            gaining.push(d);
        }
        let refused = gaining.iter().any(|d| {
            per.get(d)
                .is_some_and(|&(add, sub)| self.doms.mem_refused(*d, add, sub, quota))
        });
        if refused {
            if let Some(tx) = self.tx.as_deref_mut() {
                tx.fail = true;
            }
            return Err(XsError::Eio);
        }
        Ok(())
    }

    /// The memory the node now at `path` (as this operation sees it) counts, and the domain
    /// it counts for.
    fn held(&self, path: &str) -> Option<(DomId, usize)> {
        match self.tx.as_deref() {
            Some(tx) => tx
                .entries
                .get(path)
                .and_then(|e| e.local.as_ref())
                .map(|n| (self.who.domid, node_mem(path, n))),
            None => self
                .tree
                .get(path)
                .map(|n| (self.doms.effective_owner(n), node_mem(path, n))),
        }
    }

    /// `write_node()` without the quota check (callers check first): a new generation
    /// (`access_node()`), permission entries of vanished domains flagged, stored in the live
    /// tree or the transaction's view.
    fn write(&mut self, path: &str, mut node: Node) {
        *self.gen = self.gen.saturating_add(1);
        node.generation = *self.gen;
        self.doms.adjust(&mut node);
        match self.tx.as_deref_mut() {
            None => tree_put(self.tree, self.doms, path, Some(node)),
            Some(tx) => {
                if !tx.entries.contains_key(path) {
                    // Every write reads its node first; keep the bookkeeping whole anyway.
                    tx.order.push(path.to_string());
                }
                let live = &*self.tree;
                let e = tx.entries.entry(path.to_string()).or_insert_with(|| {
                    let l = live.get(path);
                    TxEntry {
                        generation: l.map(|n| n.generation),
                        local: None,
                        modified: false,
                        fire: None,
                        old_perms: l.map(|n| n.perms.clone()),
                    }
                });
                let m = node_mem(path, &node);
                if let Some(o) = e.local.replace(node) {
                    self.doms.mem_sub(self.who.domid, node_mem(path, &o));
                }
                self.doms.mem_add(self.who.domid, m);
                e.modified = true;
            }
        }
    }

    /// Remove one node (not its children): `db_delete()` / `access_node(DELETE)`.
    fn delete(&mut self, path: &str) {
        *self.gen = self.gen.saturating_add(1);
        match self.tx.as_deref_mut() {
            None => tree_put(self.tree, self.doms, path, None),
            Some(tx) => {
                if let Some(e) = tx.entries.get_mut(path) {
                    if let Some(o) = e.local.take() {
                        self.doms.mem_sub(self.who.domid, node_mem(path, &o));
                    }
                    e.modified = true;
                }
            }
        }
    }

    /// Count nodes for quota purposes: at once, or at commit for a transaction.
    fn count(&mut self, domid: crate::DomId, delta: i64) {
        match self.tx.as_deref_mut() {
            None => self.doms.add_entries(domid, delta),
            Some(tx) => tx.add_entries(domid, delta),
        }
    }

    /// `fire_watches()` / `queue_watches()`: deliver after the operation, or mark the node for
    /// commit inside a transaction (a transaction whose bookkeeping lacks the node is doomed,
    /// as in C).
    fn fire(&mut self, path: &str, exact: bool, perms: Vec<Vec<NodePerm>>) {
        match self.tx.as_deref_mut() {
            None => self.fires.push(Fire {
                path: path.to_string(),
                exact,
                perms,
            }),
            Some(tx) => match tx.entries.get_mut(path) {
                Some(e) => e.fire = Some(e.fire.map_or(exact, |prev| prev && exact)),
                None => tx.fail = true,
            },
        }
    }

    /// The permission lists that let an event for `node` at `path` through: the node's and
    /// its parent's (outside transactions only; at commit they are taken from the live tree).
    fn event_perms(&self, path: &str, node_perms: Vec<NodePerm>) -> Vec<Vec<NodePerm>> {
        if self.tx.is_some() {
            return Vec::new();
        }
        let mut v = alloc::vec![node_perms];
        if let Some(p) = self.live(parent(path)) {
            v.push(p.perms);
        }
        v
    }

    /// `get_node()`: the node if this connection has all of `need` on it. Otherwise `EACCES`,
    /// or for a missing node `ENOENT` — but only when the nearest existing ancestor grants the
    /// connection any of `need`, so that nodes one may not see are indistinguishable from
    /// absent ones (`errno_from_parents()`; checked: a domU reading a missing node under the
    /// dom0-only root gets `EACCES`, under a node it may read `ENOENT`).
    pub fn get_node(&mut self, path: &str, need: u8) -> Result<Node, XsError> {
        match self.read(path)? {
            Some(node) if self.perm(&node) & need == need => Ok(node),
            Some(_) => Err(self.errno_from_parents(path, XsError::Eacces, need)),
            None => Err(self.errno_from_parents(path, XsError::Enoent, need)),
        }
    }

    /// `errno_from_parents()` + `ask_parents()`.
    fn errno_from_parents(&mut self, path: &str, errnum: XsError, need: u8) -> XsError {
        let mut cur = path.to_string();
        loop {
            let up = parent(&cur).to_string();
            match self.read(&up) {
                Err(e) => return e,
                Ok(Some(n)) => {
                    return if self.perm(&n) & need != 0 {
                        errnum
                    } else {
                        XsError::Eacces
                    };
                }
                // No node at the root: xenstored calls the store corrupt and denies.
                Ok(None) if up == "/" => return XsError::Eacces,
                Ok(None) => cur = up,
            }
        }
    }

    /// `do_read()`.
    pub fn read_value(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        Ok(self.get_node(path, PERM_READ)?.value)
    }

    /// `send_directory()`.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        Ok(self.get_node(path, PERM_READ)?.children)
    }

    /// `do_get_perms()` on a node path.
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<NodePerm>, XsError> {
        Ok(self.get_node(path, PERM_READ)?.perms)
    }

    /// `send_directory_part()`: `<generation>\0`, then as many whole NUL-terminated entries of
    /// the children list from byte `offset` on as fit, then one more NUL if that reached the
    /// end. The offset is a byte offset and may point into a name (checked: offset 2 into
    /// `tool\0t1\0` yields `ol\0t1\0\0`) or at a NUL (an empty first entry); an offset at or
    /// past the end yields `<generation>\0\0`. Built here byte by byte because
    /// [`crate::Response::DirectoryPart`] cannot represent those partial lists.
    pub fn directory_part(&mut self, path: &str, offset: u32) -> Result<Vec<u8>, XsError> {
        let node = self.get_node(path, PERM_READ)?;
        let children = node.children_bytes();
        let mut out = format!("{}", node.generation).into_bytes();
        out.push(0);
        let genlen = out.len();
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        if off >= children.len() {
            out.push(0);
            return Ok(out);
        }
        let maxlen = XENSTORE_PAYLOAD_MAX.saturating_sub(genlen + 1);
        let mut len = 0usize;
        loop {
            let rest = children.get(off + len..).unwrap_or(&[]);
            let Some(slen) = rest.iter().position(|&b| b == 0) else {
                break;
            };
            if len + slen >= maxlen {
                break;
            }
            len += slen + 1;
            if off + len >= children.len() {
                break;
            }
        }
        out.extend_from_slice(children.get(off..off + len).unwrap_or(&[]));
        if off + len >= children.len() {
            out.push(0);
        }
        Ok(out)
    }

    /// `do_write()`.
    pub fn write_value(&mut self, path: &str, value: Vec<u8>) -> Result<(), XsError> {
        match self.get_node(path, PERM_WRITE) {
            Ok(mut node) => {
                node.value = value;
                self.check_size(&node)?;
                self.check_memory(&[(path, &node)])?;
                let perms = self.event_perms(path, node.perms.clone());
                self.write(path, node);
                self.fire(path, false, perms);
                Ok(())
            }
            Err(XsError::Enoent) => {
                let perms = self.create_node(path, value)?;
                self.fire(path, false, perms);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `do_mkdir()`: an existing node (that one may write) is fine and fires nothing
    /// (checked).
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        match self.get_node(path, PERM_WRITE) {
            Ok(_) => Ok(()),
            Err(XsError::Enoent) => {
                let perms = self.create_node(path, Vec::new())?;
                self.fire(path, false, perms);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `create_node()` + `construct_node()`: create `path` and any missing ancestors. Each
    /// new node inherits its parent's permissions, and an unprivileged creator becomes the
    /// owner ("Inherit permissions, unpriv domains own what they create"; checked: dom0
    /// writing under `/local/domain/2` (`n2`) creates nodes owned by 2, domain 1 writing
    /// under `/wr` (`n0,w1`) creates `n1,w1`). Returns the permission lists for the event.
    ///
    /// Node quota (`domain_nbentry()` is 0 for privileged connections): outside transactions
    /// each new node is refused once the creator owns `nodes`; inside one the live count is
    /// checked, the transaction's own additions only at commit (checked: seven writes in a
    /// transaction with `-E 6` succeed, the commit fails `ENOSPC`).
    fn create_node(&mut self, path: &str, value: Vec<u8>) -> Result<Vec<Vec<NodePerm>>, XsError> {
        // Walk up until an existing node is found.
        let mut missing: Vec<String> = alloc::vec![path.to_string()];
        let mut cur = parent(path).to_string();
        let mut top = loop {
            match self.read(&cur)? {
                Some(n) => break n,
                None if cur == "/" => return Err(XsError::Enoent),
                None => {
                    let up = parent(&cur).to_string();
                    missing.push(core::mem::replace(&mut cur, up));
                }
            }
        };
        let top_path = cur;
        let k = missing.len();
        if !self.who.privileged {
            let have = self.doms.nbentry(self.who.domid);
            let refused = if self.tx.is_some() {
                have >= self.q.nodes
            } else {
                have.saturating_add(k) > self.q.nodes
            };
            if refused {
                return Err(XsError::Enospc);
            }
        }
        // Build the new nodes top-down, each inheriting from the one above.
        if let Some(first) = missing.last() {
            top.children.push(basename(first).to_string());
        }
        let mut new_nodes: Vec<(String, Node)> = Vec::with_capacity(k);
        let mut inherit = top.perms.clone();
        for i in (0..k).rev() {
            let Some(p) = missing.get(i) else { continue };
            let mut n = Node {
                value: Vec::new(),
                perms: inherit.clone(),
                children: Vec::new(),
                generation: 0,
            };
            if !self.who.privileged {
                if let Some(o) = n.perms.first_mut() {
                    o.domid = self.who.domid;
                }
            }
            if let Some(below) = i.checked_sub(1).and_then(|j| missing.get(j)) {
                n.children.push(basename(below).to_string());
            }
            inherit = n.perms.clone();
            new_nodes.push((p.clone(), n));
        }
        if let Some((_, deepest)) = new_nodes.last_mut() {
            deepest.value = value;
        }
        self.check_size(&top)?;
        for (_, n) in &new_nodes {
            self.check_size(n)?;
        }
        let mut writes: Vec<(&str, &Node)> =
            new_nodes.iter().map(|(p, n)| (p.as_str(), n)).collect();
        writes.push((top_path.as_str(), &top));
        self.check_memory(&writes)?;
        // Event permissions: the node and its (possibly new) parent.
        let mut perms = Vec::new();
        if self.tx.is_none() {
            let mut it = new_nodes.iter().rev();
            if let Some((_, n)) = it.next() {
                perms.push(n.perms.clone());
            }
            match it.next() {
                Some((_, n)) => perms.push(n.perms.clone()),
                None => perms.push(top.perms.clone()),
            }
        }
        // Write bottom-up, as C does, counting each new node for its owner.
        for (p, n) in new_nodes.into_iter().rev() {
            let owner = n.owner();
            self.write(&p, n);
            self.count(owner, 1);
        }
        self.write(&top_path, top);
        if let Some(tx) = self.tx.as_deref_mut() {
            tx.node_created = true;
        }
        Ok(perms)
    }

    /// `do_rm()`: removing `/` is `EINVAL`; removing a missing node is fine if its parent
    /// exists, else `ENOENT` (checked: `rm /nonexist` → OK, `rm /nonexist/child` → ENOENT).
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        match self.get_node(path, PERM_WRITE) {
            Ok(_) if path == "/" => Err(XsError::Einval),
            Ok(_) => self.rm_node(path),
            Err(XsError::Enoent) => match self.read(parent(path))? {
                Some(_) => Ok(()),
                None => Err(XsError::Enoent),
            },
            Err(e) => Err(e),
        }
    }

    /// `rm_node()` + `delnode_sub()`: remove a subtree, children before parents in
    /// children-list order. Each removed node fires watches set exactly on it; the subtree's
    /// root fires watches on it and above (checked: removing `/rmt/a` with `b/c` and `d`
    /// fires `/rmt/a/b/c`, `/rmt/a/b`, `/rmt/a/d` for watches on those paths, then `/rmt/a`
    /// for watches on `/rmt/a` and `/rmt`; a watch on a path below the subtree that names no
    /// node fires nothing). Permission for each event is judged on the node and its parent
    /// as they were before removal.
    pub fn rm_node(&mut self, path: &str) -> Result<(), XsError> {
        let ppath = parent(path).to_string();
        let Some(mut pnode) = self.read(&ppath)? else {
            return Err(XsError::Einval);
        };
        let Some(root) = self.read(path)? else {
            return Err(XsError::Eio);
        };
        // (path, node, index of the next child to visit)
        let mut stack: Vec<(String, Node, usize)> = alloc::vec![(path.to_string(), root, 0)];
        loop {
            let next = match stack.last_mut() {
                None => break,
                Some((p, n, i)) => match n.children.get(*i) {
                    Some(name) => {
                        *i += 1;
                        Some(child_path(p, name))
                    }
                    None => None,
                },
            };
            match next {
                Some(cpath) => {
                    // A child listed but absent would be store corruption; skip it.
                    if let Some(child) = self.read(&cpath)? {
                        stack.push((cpath, child, 0));
                    }
                }
                None => {
                    let Some((p, n, _)) = stack.pop() else { break };
                    let parent_perms = stack
                        .last()
                        .map_or_else(|| pnode.perms.clone(), |f| f.1.perms.clone());
                    let perms = if self.tx.is_some() {
                        Vec::new()
                    } else {
                        alloc::vec![n.perms.clone(), parent_perms]
                    };
                    self.count(n.owner(), -1);
                    self.delete(&p);
                    self.fire(&p, p != path, perms);
                }
            }
        }
        let name = basename(path);
        if let Some(i) = pnode.children.iter().position(|c| c == name) {
            pnode.children.remove(i);
        }
        self.write(&ppath, pnode);
        Ok(())
    }

    /// `do_set_perms()` on a node path, after the checks that come before it (entry count,
    /// syntax, owner must exist). Requires write + owner permission (the owner, its device
    /// model, or a privileged connection; checked: a domU with `w` in the ACL gets `EACCES`);
    /// an unprivileged owner may change the ACL but not the owner (`EPERM`, checked). Fires
    /// with the old permissions also allowing the event, so a watcher that just lost access
    /// still hears of it (checked).
    pub fn set_perms(&mut self, path: &str, perms: Vec<NodePerm>) -> Result<(), XsError> {
        let mut node = self.get_node(path, PERM_WRITE | PERM_OWNER)?;
        let new_owner = perms.first().map_or(0, |p| p.domid);
        if !self.who.privileged && new_owner != node.owner() {
            return Err(XsError::Eperm);
        }
        let old = core::mem::replace(&mut node.perms, perms);
        self.check_size(&node)?;
        self.check_memory(&[(path, &node)])?;
        let old_owner = old.first().map_or(0, |p| p.domid);
        self.count(old_owner, -1);
        self.count(new_owner, 1);
        let mut ev = self.event_perms(path, node.perms.clone());
        if self.tx.is_none() {
            ev.push(old);
        }
        self.write(path, node);
        self.fire(path, false, ev);
        Ok(())
    }
}
