//! Per-domain quotas and the server's own output bound.

/// Limits, named after C xenstored's command-line options (Xen 4.17
/// `tools/xenstore/xenstored_core.c`), with its defaults. Every xenstored quota applies to
/// unprivileged connections only, except `path_max`, which 4.17 applies to everyone (checked
/// against the real daemon: dom0 gets `EINVAL` for `/` + 3071 bytes).
///
/// The error each one yields, and the exact comparison, were checked against Debian's
/// xenstored 4.17 (`ci/real-xenstored`):
///
/// | field | option | default | error | rule |
/// |---|---|---|---|---|
/// | `nodes` | `-E` | 1000 | `ENOSPC` | a new node is refused when the domain already owns `nodes` (so it may own exactly `nodes`); at transaction commit the resulting count must stay *below* `nodes` |
/// | `watches` | `-W` | 128 | `E2BIG` | refused when the connection already has *more than* `watches` (so `watches + 1` fit) |
/// | `transactions` | `-t` | 10 | `ENOSPC` | refused when the connection already has *more than* `transactions` open (`+ 1` fit) |
/// | `node_size` | `-S` | 2048 | `ENOSPC` | a write by an unprivileged connection is refused when the node's accounted size (24 + 8 × perms + data + children names with NULs) would be `>= node_size`; this includes a parent whose children list grows |
/// | `perms_per_node` | `-A` | 5 | `ENOSPC` | `SET_PERMS` with more than this many entries |
/// | `path_max` | `-M` | 2048 | `EINVAL` | path length after a `/local/domain/<N>/` prefix `> path_max` |
/// | `transaction_nodes` | `-Q transaction-nodes` | 1024 | `ENOSPC`, then `ENOMEM` at commit | a transaction may touch (read or write) at most this many distinct nodes; the access that exceeds it fails and dooms the transaction |
/// | `memory` | `-Q memory` | 2621440 (2.5 MiB) | `EIO` (node writes), `ENOMEM` (watches, replies) | an unprivileged domain's accounted memory (see the field) may not *reach* `memory`: a request whose result would leave it `>= memory` is refused; 0 disables |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// `-E`: nodes a domain may own.
    pub nodes: usize,
    /// `-W`: watches per connection of an unprivileged domain.
    pub watches: usize,
    /// `-t`: open transactions per connection of an unprivileged domain.
    pub transactions: usize,
    /// `-S`: accounted node size.
    pub node_size: usize,
    /// `-A`: permission entries per node.
    pub perms_per_node: usize,
    /// `-M`: path length (after `/local/domain/<N>/`).
    pub path_max: usize,
    /// `-Q transaction-nodes`: distinct nodes one transaction may access.
    pub transaction_nodes: usize,
    /// `-Q memory=<bytes>` (`quota_memory_per_domain_hard`): the memory an unprivileged
    /// domain may hold in the store. The rule is C xenstored's since the XSA-326 fixes (Xen
    /// 4.17 `tools/xenstore/xenstored_domain.c` `domain_memory_add()` / `domain_chk_quota()`,
    /// `xenstored_core.c` `do_tdb_write()`, `send_reply()`, `send_event()`,
    /// `xenstored_watch.c` `add_watch()`; 4.19 moved them to `tools/xenstored/` unchanged),
    /// checked against Debian's xenstored 4.17.7 (`ci/real-xenstored`, `-Q memory=...`).
    ///
    /// What is accounted, to whom:
    /// * every node, to its (effective) owner: its accounted size as for [`Quotas::node_size`]
    ///   (24 + 8 × perms + data + children names with NULs) plus the length of its path —
    ///   checked: `/local/domain/5` with no data counts 32 + 15 = 47;
    /// * every node copy a transaction holds (each existing node it read or wrote, until it
    ///   ends), to the domain of the transaction's connection, the same size. xenstored
    ///   stores such a copy under `<generation>/<path>` and counts that key, a few bytes
    ///   more per copy; ours has no such key, so we count the path;
    /// * every watch, to its connection's domain: path (absolute) + token, no NULs;
    /// * every message queued for the connection, until taken: payload + 16 (header).
    ///
    /// The check (`domain_chk_quota()`: `mem >= hard`) applies to the domain the memory
    /// would be accounted to, whoever asks — dom0 creating a node in a domU's home that the
    /// domU owns is refused too (checked) — and never to dom0's own memory. Refused:
    /// * `WRITE`, `MKDIR`, `SET_PERMS`, inside a transaction or not, when the node(s) they
    ///   store would leave a domain's total `>= memory` (an overwrite counts the difference,
    ///   but is refused while the total stays `>=`, even when it shrinks): `EIO`. xenstored
    ///   answers `EIO` when it creates a node (checked: holding 7418 bytes, an 8th node
    ///   `/local/domain/5/n7` of 1000 bytes — 1050, plus 3 for its parent's children list,
    ///   8471 in all — is refused with `-Q memory=8471` and fits with 8472); when it
    ///   overwrites one it answers a leftover `errno` (seen: `ENOENT`, `EIO`) — we answer
    ///   `EIO` there too. A refused write inside a transaction dooms it.
    /// * `WATCH`: `ENOMEM` (checked).
    /// * a reply with more than 16 bytes of payload that would not fit becomes `ENOMEM`
    ///   (checked with a 1000-byte `READ`); short replies and error replies always go.
    /// * a watch event that would not fit is dropped (counted in
    ///   [`super::Store::dropped_events`]).
    ///
    /// Never refused: reads copying nodes into a transaction, commits, `RM` and the parent it
    /// shrinks, and dom0 acting on its own nodes. Memory is given back when nodes are removed
    /// or overwritten smaller, when a transaction ends (commit moves the copies into the tree,
    /// to the nodes' owners), on `UNWATCH`/`RESET_WATCHES`, when output is taken, and when
    /// the connection goes (release, destroy, disconnect); a domain destroyed is forgotten
    /// with its count. While a domain holds `>= memory` (only reachable through what is never
    /// refused), [`super::Store::wants_input`] is false for its connection, as xenstored stops
    /// reading its ring (`domain_can_read()`). xenstored's soft quota (`-q memory`, 2 MiB)
    /// only logs; we have none.
    pub memory: usize,
    /// `-K` (keep orphans): when false (the default), releasing or destroying a domain
    /// removes every node it owns, firing watches as `XS_RM` would.
    pub keep_orphans: bool,
    /// Our own bound (no xenstored option): messages queued for one connection. Watch events
    /// are dropped while the queue holds this many (as xenstored drops events past the
    /// memory quota, which [`Quotas::memory`] applies as well); replies are still queued up to twice this many, after which the
    /// connection is marked broken, its queue discarded and its requests ignored — a peer
    /// that sends requests without reading replies gets cut off, as xenstored's
    /// `ignore_connection()` does. See [`super::Store::wants_input`] for the backpressure a
    /// transport should apply first.
    pub outbox: usize,
}

impl Quotas {
    /// xenstored 4.17's defaults (`quota_nb_entry_per_domain` 1000, `quota_nb_watch_per_domain`
    /// 128, `quota_max_transaction` 10, `quota_max_entry_size` 2048,
    /// `quota_nb_perms_per_node` 5, `quota_max_path_len` = `XENSTORE_REL_PATH_MAX` 2048,
    /// `quota_trans_nodes` 1024, `quota_memory_per_domain_hard` 2.5 MiB), orphans removed,
    /// 1024 queued messages per connection.
    pub const DEFAULT: Quotas = Quotas {
        nodes: 1000,
        watches: 128,
        transactions: 10,
        node_size: 2048,
        perms_per_node: 5,
        path_max: 2048,
        transaction_nodes: 1024,
        memory: 2 * 1024 * 1024 + 512 * 1024,
        keep_orphans: false,
        outbox: 1024,
    };
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::DEFAULT
    }
}
