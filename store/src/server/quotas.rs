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
    /// `-K` (keep orphans): when false (the default), releasing or destroying a domain
    /// removes every node it owns, firing watches as `XS_RM` would.
    pub keep_orphans: bool,
    /// Our own bound (no xenstored option): messages queued for one connection. Watch events
    /// are dropped while the queue holds this many (xenstored drops events for a domain over
    /// its memory quota); replies are still queued up to twice this many, after which the
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
    /// `quota_trans_nodes` 1024), orphans removed, 1024 queued messages per connection.
    pub const DEFAULT: Quotas = Quotas {
        nodes: 1000,
        watches: 128,
        transactions: 10,
        node_size: 2048,
        perms_per_node: 5,
        path_max: 2048,
        transaction_nodes: 1024,
        keep_orphans: false,
        outbox: 1024,
    };
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::DEFAULT
    }
}
