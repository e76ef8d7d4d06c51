//! Nodes of the tree, their permission entries, and the permission rules.
//!
//! Sources (Xen 4.17 `tools/xenstore/xenstored_core.c`, same code in 4.19's
//! `tools/xenstored/core.c`): `struct node`, `perm_for_conn()`, `calc_node_acc_size()`,
//! `get_parent()`, `is_child()`.

use alloc::string::String;
use alloc::vec::Vec;

use crate::perms::{Access, Perm, PermError, Perms};
use crate::DomId;

/// `sizeof(struct xs_tdb_record_hdr)`: `u64 generation; u32 num_perms, datalen, childlen;`
/// padded to 8 — what xenstored counts for a node besides perms, data and children
/// (`calc_node_acc_size()`; checked against the real daemon: with `-S 64` a node with one
/// permission holds at most 31 bytes of data, 24 + 8 + 31 = 63 < 64).
pub(crate) const NODE_HDR_SIZE: usize = 24;
/// `sizeof(struct xs_permissions)` (`enum xs_perm_type perms; unsigned int id;`).
pub(crate) const PERM_SIZE: usize = 8;

/// `XS_PERM_READ` (xenstore_lib.h).
pub(crate) const PERM_READ: u8 = 1;
/// `XS_PERM_WRITE`.
pub(crate) const PERM_WRITE: u8 = 2;
/// `XS_PERM_OWNER`: only the owner, its device model (`SET_TARGET`) and privileged
/// connections have it; no ACL letter grants it.
pub(crate) const PERM_OWNER: u8 = 4;
/// All three.
pub(crate) const PERM_ALL: u8 = PERM_READ | PERM_WRITE | PERM_OWNER;

/// One stored permission entry: the wire entry plus xenstored's `XS_PERM_IGNORE` flag, set on
/// entries naming a domain that did not exist when they were set, or an earlier incarnation
/// of a domid that has since been destroyed and re-created (XSA-322, `domain_alloc_permrefs()`
/// and `domain_adjust_node_perms()` in xenstored_domain.c). Ignored entries grant nothing but
/// still show in `GET_PERMS` (`xenstore_perm_to_string()` masks the flag out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodePerm {
    pub access: Access,
    pub domid: DomId,
    pub ignore: bool,
}

impl NodePerm {
    pub fn from_perm(p: &Perm) -> NodePerm {
        NodePerm {
            access: p.access,
            domid: p.domid,
            ignore: false,
        }
    }

    fn bits(self) -> u8 {
        let mut b = 0;
        if self.access.can_read() {
            b |= PERM_READ;
        }
        if self.access.can_write() {
            b |= PERM_WRITE;
        }
        b
    }
}

/// Convert stored entries to the wire list (flags dropped). `None` only for an empty list,
/// which the store never holds.
pub(crate) fn to_perms(entries: &[NodePerm]) -> Result<Perms, PermError> {
    Perms::from_vec(
        entries
            .iter()
            .map(|e| Perm::new(e.access, e.domid))
            .collect(),
    )
}

/// Who is asking: what `perm_for_conn()` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Who {
    /// `!domain_is_unprivileged(conn)`: dom0's ring and every Unix-socket connection.
    pub privileged: bool,
    /// `conn->id`.
    pub domid: DomId,
    /// `conn->target->id` after `XS_SET_TARGET` (a device model acting for its guest).
    pub target: Option<DomId>,
}

/// `perm_for_conn()`: privileged connections, the owner (entry 0) and the owner's device
/// model get read + write + owner; otherwise the first non-ignored ACL entry naming the
/// domain (or its target) decides; otherwise entry 0's access (the default for everyone).
pub(crate) fn perm_for(who: &Who, perms: &[NodePerm]) -> u8 {
    let Some(first) = perms.first() else {
        // "No permissions" cannot happen (every node has an owner entry); grant nothing.
        return if who.privileged { PERM_ALL } else { 0 };
    };
    let names = |d: DomId| d == who.domid || who.target == Some(d);
    if who.privileged || names(first.domid) {
        return PERM_ALL;
    }
    perms
        .iter()
        .skip(1)
        .find(|p| !p.ignore && names(p.domid))
        .map_or(first.bits(), |p| p.bits())
}

/// A node: value, permissions (owner first, never empty), children in insertion order
/// (xenstored appends a new child's name to the parent's NUL-separated list and removes it in
/// place, so `DIRECTORY` lists children in creation order), and the generation count of its
/// last modification (transactions and `DIRECTORY_PART` use it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub value: Vec<u8>,
    pub perms: Vec<NodePerm>,
    pub children: Vec<String>,
    pub generation: u64,
}

impl Node {
    /// A node owned by `owner` with default access `others`.
    pub fn new(owner: DomId, others: Access) -> Node {
        Node {
            value: Vec::new(),
            perms: alloc::vec![NodePerm {
                access: others,
                domid: owner,
                ignore: false,
            }],
            children: Vec::new(),
            generation: 0,
        }
    }

    /// Entry 0's domain.
    pub fn owner(&self) -> DomId {
        self.perms.first().map_or(0, |p| p.domid)
    }

    /// Bytes of the NUL-separated children list (`node->hdr.childlen`).
    pub fn childlen(&self) -> usize {
        self.children.iter().map(|c| c.len() + 1).sum()
    }

    /// The children list as xenstored stores it: every name NUL-terminated.
    pub fn children_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.childlen());
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }

    /// What the node-size quota counts (`calc_node_acc_size()`).
    pub fn acc_size(&self) -> usize {
        NODE_HDR_SIZE + self.perms.len() * PERM_SIZE + self.value.len() + self.childlen()
    }
}

/// What a node stored at `path` counts for the memory quota (`do_tdb_write()`: the record,
/// [`Node::acc_size`], plus the key, the path without its NUL).
pub(crate) fn node_mem(path: &str, node: &Node) -> usize {
    node.acc_size().saturating_add(path.len())
}

/// The parent of an absolute path (`get_parent()`): `/a/b` → `/a`, `/a` → `/`, `/` → `/`.
pub(crate) fn parent(path: &str) -> &str {
    match path.get(1..).and_then(|rest| rest.rfind('/')) {
        Some(i) => path.get(..i + 1).unwrap_or("/"),
        None => "/",
    }
}

/// The last component of an absolute path other than `/`.
pub(crate) fn basename(path: &str) -> &str {
    path.rfind('/')
        .and_then(|i| path.get(i + 1..))
        .unwrap_or(path)
}

/// `parent/name` (`child_name()`).
pub(crate) fn child_path(parent: &str, name: &str) -> String {
    let mut s = String::with_capacity(parent.len() + 1 + name.len());
    s.push_str(parent);
    if parent != "/" {
        s.push('/');
    }
    s.push_str(name);
    s
}

/// Does a watch on `watch` fire for a change of `name`? `is_child()` of xenstored_watch.c for
/// node paths (`name` equal to or below `watch`; a watch on `/` sees every node); a `@`
/// special name only matches itself (checked against the real 4.17 daemon: a watch on `/`
/// does not receive `@introduceDomain` / `@releaseDomain`).
pub(crate) fn watch_matches(name: &str, watch: &str, exact: bool) -> bool {
    if exact || name.starts_with('@') || watch.starts_with('@') {
        return name == watch;
    }
    if watch == "/" {
        return true;
    }
    name.strip_prefix(watch)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_names() {
        assert_eq!(parent("/"), "/");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(basename("/a"), "a");
        assert_eq!(child_path("/", "a"), "/a");
        assert_eq!(child_path("/a", "b"), "/a/b");
    }

    #[test]
    fn matching() {
        assert!(watch_matches("/a/b", "/a", false));
        assert!(watch_matches("/a", "/a", false));
        assert!(!watch_matches("/ab", "/a", false));
        assert!(watch_matches("/x", "/", false));
        assert!(!watch_matches("/a/b", "/a", true));
        assert!(watch_matches("@releaseDomain", "@releaseDomain", false));
        assert!(!watch_matches("@releaseDomain", "/", false));
    }

    #[test]
    fn perm_rules() {
        let p = |a, d| NodePerm {
            access: a,
            domid: d,
            ignore: false,
        };
        let who = |d| Who {
            privileged: false,
            domid: d,
            target: None,
        };
        let perms = [p(Access::None, 1), p(Access::Read, 2), p(Access::Write, 3)];
        assert_eq!(perm_for(&who(1), &perms), PERM_ALL);
        assert_eq!(perm_for(&who(2), &perms), PERM_READ);
        assert_eq!(perm_for(&who(3), &perms), PERM_WRITE);
        assert_eq!(perm_for(&who(4), &perms), 0);
        let dm = Who {
            privileged: false,
            domid: 9,
            target: Some(2),
        };
        assert_eq!(perm_for(&dm, &perms), PERM_READ);
        let mut ign = perms;
        ign[1].ignore = true;
        assert_eq!(perm_for(&who(2), &ign), 0);
        let root = Who {
            privileged: true,
            domid: 0,
            target: None,
        };
        assert_eq!(perm_for(&root, &perms), PERM_ALL);
    }
}
