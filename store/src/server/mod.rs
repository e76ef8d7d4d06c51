//! An in-memory xenstored: the XenStore server for the simulator and host tests.
//!
//! Pure state machine — no I/O, no threads, no time. A transport (the simulator's ring pages,
//! a Unix socket) frames bytes with [`crate::Framer`], hands each [`crate::Message`] to
//! [`Store::handle`], and writes back what [`Store::take_output`] returns:
//!
//! ```
//! use xen_store::server::{Quotas, Store};
//! use xen_store::{Request, Response};
//!
//! let mut xs = Store::new(Quotas::default());
//! let dom0 = xs.connect(0); // a privileged connection, like a toolstack on the socket
//! let msg = Request::Write { path: "/vm/name".parse().unwrap(), value: b"guest".to_vec() }
//!     .to_message(1, 0)
//!     .unwrap();
//! xs.handle(dom0, &msg);
//! let out = xs.take_output(dom0);
//! assert_eq!(Response::from_message(&out[0]).unwrap(), Response::Ok(msg.msg_type().unwrap()));
//! ```
//!
//! # Semantics
//! Where docs/misc/xenstore.txt and the C xenstored of Xen 4.17 (`tools/xenstore/`; 4.19
//! moved it to `tools/xenstored/` with the same rules) differ, we follow the daemon. Rules
//! marked "checked" were confirmed against Debian's xenstored 4.17 under
//! `ci/real-xenstored` (dom0 on the socket, domUs on real shared rings).
//!
//! **Connections and privilege.** Socket connections and dom0's are privileged
//! (`domain_is_unprivileged()`); every other domain has exactly one (ring) connection.
//! Privileged connections bypass permissions and quotas (except path length). `CONTROL`,
//! `INTRODUCE`, `RELEASE`, `IS_DOMAIN_INTRODUCED`, `RESUME` and `SET_TARGET` from a domU are
//! `EACCES` (`XS_FLAG_PRIV`; checked); `GET_DOMAIN_PATH`, `RESET_WATCHES` and
//! `DIRECTORY_PART` are open to all.
//!
//! **Checks in order** (`process_message()`): unknown type or a server-only type
//! (`WATCH_EVENT`, `ERROR`) → `ENOSYS`; privileged-only type → `EACCES`; a non-zero
//! transaction id the connection does not have → `ENOENT` (`WATCH`/`UNWATCH` ignore the id,
//! checked); malformed payload → the codec's error (`EINVAL`; `E2BIG` for a payload over
//! 4096 bytes); then the operation. The connection always stays usable.
//!
//! **Paths.** The codec's rules (characters `[A-Za-z0-9/_@-]`, so no `.`/`..`; no `//`, no
//! trailing `/`), then xenstored's path quota: at most [`Quotas::path_max`] (2048) bytes after
//! a `/local/domain/<N>/` prefix, for every connection (`EINVAL`; checked: `/` + 3071 bytes is
//! refused even to dom0). Relative paths are relative to `/local/domain/<domid>`. `@` names
//! only for `WATCH`/`UNWATCH`/`SET_PERMS`; `GET_PERMS` of one is `EINVAL` in 4.17 (checked).
//!
//! **Permissions** (`perm_for_conn()`): entry 0 names the owner — who has read, write and
//! "owner" — and the access of everyone not listed; entries 1.. are an ACL (first match
//! wins); a domain's device model (`SET_TARGET`) has the rights of its target. Access to an
//! existing node without the right → `EACCES`; a missing node is `ENOENT` only if its nearest
//! existing ancestor grants any of the needed rights, else `EACCES` (`errno_from_parents()`,
//! checked). Creating a node needs write on the nearest existing ancestor; new nodes (and
//! missing ancestors) inherit the parent's permissions with an unprivileged creator as owner
//! (checked). `SET_PERMS` needs write + owner; a domU may not change the owner (`EPERM`) and
//! an owner that does not exist is `ENOENT` (checked). Permission entries naming a domain
//! that did not exist, or an earlier domain with a re-used domid, are ignored (XSA-322; see
//! `domain.rs`).
//!
//! **Operations.** `WRITE`/`MKDIR` create missing parents; `MKDIR` of an existing node is a
//! silent success. `RM` of `/` is `EINVAL`; of a missing node `OK` if its parent exists,
//! else `ENOENT` (checked). `DIRECTORY` over 4096 bytes is `E2BIG`; `DIRECTORY_PART` pages a
//! children list by byte offset with the node's generation (checked). `RESET_WATCHES` drops
//! the connection's watches and transactions (checked).
//!
//! **Watches** (xenstored_watch.c): `WATCH` replies, then fires once with the watch's own path
//! (relative if given relative) whatever the permissions; duplicate path + token is `EEXIST`;
//! `UNWATCH` of an unknown one `ENOENT` — even with an invalid path, which 4.17 does not
//! validate (checked). A change fires every watch at or above the node —
//! `WRITE` (only for the named node, not the parents it creates), `MKDIR` (of a new node),
//! `SET_PERMS`, and `RM`, which also fires watches set exactly on each removed descendant,
//! deepest first (checked). An event reaches a connection only if its domain may read the
//! node or its parent (or, for `SET_PERMS`, the old permissions) (`watch_permitted()`,
//! checked). `@introduceDomain` fires when a domain is first introduced, `@releaseDomain` when
//! one is released, destroyed or shuts down; they reach privileged connections and domains
//! the special name's permissions grant read (set with `SET_PERMS @...`; default `n0`;
//! checked). Identical events still queued are not queued twice (except `@` events), events
//! over 4096 bytes are dropped (XSA-326).
//!
//! **Transactions** (xenstored_transaction.c): each node a transaction touches — read or
//! written, present or not, including parents read to create a node or to choose between
//! `ENOENT` and `EACCES` — is recorded with its generation count at first access, and the
//! transaction sees its own copy from then on (checked: a re-read inside the transaction
//! returns the old value after another connection changed it). Commit (`T`) answers `ENOMEM`
//! if an access failed on the transaction-nodes quota, `ENOSPC` if it leaves an unprivileged
//! domain with `>=` [`Quotas::nodes`] nodes, and `EAGAIN` if any recorded node changed
//! meanwhile — including nodes it only overwrote and parents it added children to (checked).
//! Its watch events fire at commit. `F` aborts. No nesting (`EBUSY`); `TRANSACTION_END`
//! without a transaction is `ENOENT`; ids count from 1 per connection.
//!
//! **Quotas** and **domains**: see [`Quotas`] (each limit with its error and exact
//! comparison) and [`Store::destroy_domain`]. The memory quota ([`Quotas::memory`], XSA-326)
//! counts what each unprivileged domain holds — the nodes it owns, its transactions' node
//! copies, its watches and its queued output — and refuses node writes past it with `EIO`,
//! watches and long replies with `ENOMEM`.
//!
//! # Where we differ from xenstored 4.17 (deliberately)
//! * Numbers and permission strings must be strict decimals (the codec's rule): xenstored's
//!   `atoi()`/`strtol(.., 0)` accept `abc` (as 0), `r0x10`, `r+5`; we answer `EINVAL`.
//!   Likewise a `WATCH` with bytes after its last NUL.
//! * Requests on which 4.17 hits an assertion and exits (found while checking): `SET_PERMS`
//!   on an unknown `@` name (we answer `ENOENT`), `SET_PERMS` by a domU that owns a `@` name
//!   giving it to another domain (`EPERM`, as for nodes), `RM` of a path without its NUL
//!   (`EINVAL`).
//! * The output queue bound and backpressure ([`Quotas::outbox`]) replace xenstored's
//!   outstanding-request quota and 20 s watch-event timeout (the memory quota is
//!   [`Quotas::memory`], as in xenstored).
//! * Memory quota: a transaction's node copy counts its path, not xenstored's
//!   `<generation>/<path>` key (a few bytes less per copy), and a refused overwrite answers
//!   `EIO` where xenstored answers a leftover `errno`; no soft quota (xenstored only logs it).
//!
//! # Output policy
//! Replies come in request order; events caused by a request precede its reply on the
//! requesting connection (xenstored fires watches before acknowledging), except the initial
//! event of `WATCH`, which follows it. Per connection at most [`Quotas::outbox`] messages are
//! queued before events are dropped; replies may go to twice that, then the connection is cut
//! off ([`Store::is_broken`]). [`Store::wants_input`] tells a transport when to stop reading a
//! connection's requests.
//!
//! # What a transport does
//! * Dom0 tools on a Unix socket: [`Store::connect`]`(0)` per accepted socket, frame bytes,
//!   `handle`, write `take_output`, [`Store::disconnect`] on EOF or a framing error (a header
//!   with `len` > 4096 poisons the framer; xenstored drops such a client).
//! * Simulated domains: the toolstack calls [`Store::create_domain`] when it builds a domain,
//!   sends `XS_INTRODUCE` (or calls [`Store::introduce_domain`]); [`Store::take_notices`]
//!   yields [`Notice::Introduced`] with the connection to serve on that domain's ring page
//!   and event channel, and [`Notice::Released`] when to stop. Domain death is
//!   [`Store::destroy_domain`].

mod domain;
mod node;
mod ops;
mod quotas;
mod store;
mod txn;

pub use quotas::Quotas;
pub use store::Store;

use crate::{DomId, EvtchnPort};

/// A connection to the store (a socket client or a domain's ring). Ids are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The raw id (for logs and maps in a transport).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Something the transport must act on, from [`Store::take_notices`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A domain was introduced (`new`: the connection is new — start serving its ring), or
    /// re-introduced (`new` false: re-bind the event channel to `port`, as xenstored does).
    Introduced {
        /// The domain.
        domid: DomId,
        /// Its connection.
        conn: ConnId,
        /// The ring page's frame from `XS_INTRODUCE` (0 from [`Store::introduce_domain`]).
        mfn: u64,
        /// The domain's event channel port from `XS_INTRODUCE` (0 likewise).
        port: EvtchnPort,
        /// A new connection (as opposed to a re-bind).
        new: bool,
    },
    /// The domain was released or destroyed: its connection is gone; stop serving the ring.
    Released {
        /// The domain.
        domid: DomId,
        /// The connection that was closed.
        conn: ConnId,
    },
}
