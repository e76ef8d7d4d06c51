//! Transactions (Xen 4.17 `tools/xenstore/xenstored_transaction.c`, the 2017 rework by
//! Juergen Gross that replaced whole-database copies with per-node generation counts).
//!
//! * Every node a transaction touches — read or written, existing or not, including the
//!   parents xenstored reads to create a node or to pick between `ENOENT` and `EACCES` — is
//!   recorded at its first access with its generation count (or "absent"), and from then on
//!   the transaction sees its own copy (`access_node()`). So reads are isolated per node from
//!   the first access on: a node the transaction has not touched yet is read from the live
//!   store. Checked against the real daemon: after another connection changes `/tx/a`, a
//!   transaction that had read it still reads the old value.
//! * Commit (`TRANSACTION_END T`) fails with `EAGAIN` when any recorded node's generation
//!   differs from the live one (`finalize_transaction()`); xenstored only skips this check for
//!   nodes first accessed by a write, which never happens since every write reads the node
//!   first — a transaction that blindly overwrites a node someone else changed meanwhile gets
//!   `EAGAIN` (checked), and so does one that adds a child to a directory someone else added a
//!   child to (the parent's generation changed; checked).
//! * Before that check: a transaction whose access failed on the node quota is doomed and
//!   commits with `ENOMEM` (`trans->fail`); one that created nodes for an unprivileged
//!   domain fails with `ENOSPC` when the domain's resulting node count is `>=` the quota
//!   (`transaction_fix_domains()`; checked: with `-E 6` a commit leaving 6 nodes fails).
//! * Watches do not fire inside a transaction; each modified node is marked and the events
//!   fire at commit in first-access order (`queue_watches()`), with the node's permissions
//!   as of its first access also allowing the event.
//! * Memory quota: each node copy a transaction holds (every existing node it has read or
//!   written; xenstored copies a node into the transaction on first read) counts for the
//!   connection's domain until the transaction ends; reads copy without a check, writes are
//!   checked (`EIO`) — see [`super::Quotas::memory`].

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::node::{node_mem, Node, NodePerm};
use crate::DomId;

/// One node as a transaction sees it (`struct accessed_node`).
#[derive(Debug, Clone)]
pub(crate) struct TxEntry {
    /// Generation at first access; `None`: the node did not exist.
    pub generation: Option<u64>,
    /// The transaction's view; `None`: absent (never existed, or deleted in the transaction).
    pub local: Option<Node>,
    /// Written or deleted in the transaction.
    pub modified: bool,
    /// A watch event is due at commit: `Some(exact)`. A non-exact event replaces an exact one.
    pub fire: Option<bool>,
    /// Permissions at first access (the node existed then).
    pub old_perms: Option<Vec<NodePerm>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Transaction {
    pub entries: BTreeMap<String, TxEntry>,
    /// Paths in first-access order.
    pub order: Vec<String>,
    /// Doomed: commit answers `ENOMEM`.
    pub fail: bool,
    /// A node was created in it.
    pub node_created: bool,
    /// Change of each domain's node count, applied at commit.
    pub nb_delta: BTreeMap<DomId, i64>,
}

impl Transaction {
    /// Bytes the transaction's node copies count for the memory quota of its connection's
    /// domain (see [`super::Quotas::memory`]): each node it holds a view of.
    pub fn memory(&self) -> usize {
        self.entries
            .iter()
            .filter_map(|(p, e)| e.local.as_ref().map(|n| node_mem(p, n)))
            .fold(0usize, usize::saturating_add)
    }

    pub fn add_entries(&mut self, domid: DomId, delta: i64) {
        let e = self.nb_delta.entry(domid).or_insert(0);
        *e = e.saturating_add(delta);
    }
}
