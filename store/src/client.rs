//! The XenStore client: requests and replies over a [`Transport`], watches, transactions.
//!
//! ```
//! # use core::time::Duration;
//! use xen_store::client::{Client, Store, Transport, XsClientError};
//!
//! fn demo<T: Transport>(xs: &mut Client<T>) -> Result<(), XsClientError> {
//!     let _name = xs.read_string("name")?; // relative to /local/domain/<me>
//!     xs.write_u32("device/vbd/768/state", 4)?;
//!     xs.watch("backend", "be")?;
//!     let _n = xs.transact(|tx| {
//!         // retried on EAGAIN
//!         let n = tx.read_u32("counter")?;
//!         tx.write_u32("counter", n + 1)?;
//!         Ok(n + 1)
//!     })?;
//!     while let Some(ev) = xs.next_watch_event(Some("be"), Duration::from_secs(1))? {
//!         let _changed = ev.path;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Requests
//! One request at a time: [`Client::request`] frames the request with a fresh `req_id`
//! (never 0, the id of watch events), sends it, then reads messages until the reply with that
//! `req_id` arrives. Its type must be the request's or `XS_ERROR` (which becomes
//! [`XsClientError::Xs`]); anything else is a [`ProtocolError`]. Every wait is bounded by
//! [`ClientConfig::timeout`], measured from the start of the request, so a server that never
//! answers — or keeps sending watch events instead — yields [`XsClientError::Timeout`]. A reply
//! that arrives after its request timed out is discarded (and counted in [`ClientStats`]).
//!
//! The node operations (`read`, `write`, `directory`, typed helpers, `gather`, ...) are the
//! [`Store`] trait, implemented by [`Client`] and by [`Transaction`].
//!
//! # Watch events
//! `XS_WATCH_EVENT` messages interleave with replies at any point of the stream. They are
//! never taken for a reply: whenever the client reads the stream (during a request or when
//! asked to) it queues each event under its token, in a bounded queue per token
//! ([`ClientConfig::watch_queue_len`]). When a token's queue is full the *oldest* event is
//! dropped and counted ([`Client::dropped_watch_events`]): the newest state change is the one
//! a watcher must not miss, and watchers re-read the nodes they care about anyway. Events for
//! a token with no registered watch (late events after [`Client::unwatch`]) are dropped.
//!
//! For an event loop that must not block: [`Client::poll_watch_events`] reads whatever bytes
//! the transport has *now* (a zero timeout) and queues the events; [`Client::take_watch_event`]
//! pops one without any I/O. The port to wait on is [`Transport::event_port`].
//!
//! # Failures
//! See [`XsClientError`]: after a fatal error (dead peer, corrupt ring, broken framing, a send
//! that failed half way) every call returns that error until [`Client::reset`].

mod error;
mod ops;
mod tx;
mod watch;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

pub use error::{ProtocolError, XsClientError};
pub use ops::{Gathered, Store, DIRECTORY_PART_MAX_BYTES, DIRECTORY_PART_RESTARTS};
pub use tx::Transaction;
pub use watch::{ClientStats, WatchEvent};

use crate::error::XsError;
use crate::framer::Framer;
use crate::msg::{Request, Response};
use crate::path::Path;
pub use crate::transport::{Transport, TransportError};
use crate::wire::{Message, MsgType, XENSTORE_PAYLOAD_MAX};
use crate::{DomId, EvtchnPort};
use watch::Watches;

type Result<T> = core::result::Result<T, XsClientError>;

/// How many timed-out request ids the client remembers, to discard their late replies.
const ABANDONED_MAX: usize = 32;

/// Bytes read from the transport per call.
const RX_CHUNK: usize = XENSTORE_PAYLOAD_MAX;

/// Most bytes read without waiting once a deadline has passed (or by one
/// [`Client::poll_watch_events`]).
const DRAIN_BUDGET: usize = 16 * RX_CHUNK;

/// Tunables of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// The longest a request may take, from sending it to its reply (default 10 s).
    pub timeout: Duration,
    /// How many times [`Client::transact`] retries after `EAGAIN` (default 16): at most
    /// `tx_retries + 1` attempts, then the `EAGAIN` is returned.
    pub tx_retries: u32,
    /// Watch events kept per token (default 64); beyond it the oldest is dropped.
    pub watch_queue_len: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(10),
            tx_retries: 16,
            watch_queue_len: 64,
        }
    }
}

/// A XenStore client over a [`Transport`]. See the [module docs](self).
#[derive(Debug)]
pub struct Client<T: Transport> {
    transport: T,
    config: ClientConfig,
    framer: Framer,
    rx: Vec<u8>,
    rx_pos: usize,
    rx_len: usize,
    last_req_id: u32,
    watches: Watches,
    abandoned: VecDeque<u32>,
    dead: Option<XsClientError>,
    stats: ClientStats,
}

impl<T: Transport> Client<T> {
    /// A client with the default [`ClientConfig`].
    pub fn new(transport: T) -> Self {
        Self::with_config(transport, ClientConfig::default())
    }

    /// A client with `config`.
    pub fn with_config(transport: T, config: ClientConfig) -> Self {
        Client {
            transport,
            config,
            framer: Framer::new(),
            rx: vec![0; RX_CHUNK],
            rx_pos: 0,
            rx_len: 0,
            last_req_id: 0,
            watches: Watches::new(config.watch_queue_len),
            abandoned: VecDeque::new(),
            dead: None,
            stats: ClientStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Change the request timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.config.timeout = timeout;
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (e.g. to [`reconnect`](crate::transport::RingTransport::reconnect)
    /// it; call [`reset`](Self::reset) afterwards).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Give the transport back.
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// Counters of discarded and dropped messages.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The fatal error that made the connection unusable, if any.
    pub fn failure(&self) -> Option<&XsClientError> {
        self.dead.as_ref()
    }

    /// Start afresh on a connection that was reset or reconnected: forget buffered bytes, the
    /// fatal error, timed-out request ids, and every watch and queued event (the server has
    /// forgotten them too — register watches again).
    pub fn reset(&mut self) {
        self.framer.reset();
        self.rx_pos = 0;
        self.rx_len = 0;
        self.watches.clear();
        self.abandoned.clear();
        self.dead = None;
    }

    fn alive(&self) -> Result<()> {
        match &self.dead {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Record a transport/stream failure: fatal ones stick, a reset clears our state.
    fn fail(&mut self, e: XsClientError) -> XsClientError {
        if e == XsClientError::ConnectionReset {
            self.reset();
        } else if e.is_fatal() {
            self.dead = Some(e.clone());
        }
        e
    }

    fn next_req_id(&mut self) -> u32 {
        self.last_req_id = self.last_req_id.wrapping_add(1);
        if self.last_req_id == 0 {
            self.last_req_id = 1;
        }
        self.last_req_id
    }

    fn abandon(&mut self, req_id: u32) {
        if self.abandoned.len() >= ABANDONED_MAX {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(req_id);
    }

    /// Read the stream until a message that is not a watch event is complete (returned), or
    /// `deadline` passes (`None`). Watch events met on the way are queued. Once `deadline`
    /// has passed (or from the start, with `deadline <= now`) it only drains what the
    /// transport has without waiting, at most [`DRAIN_BUDGET`] bytes: a server that streams
    /// without pause cannot keep it reading forever.
    fn pump(&mut self, deadline: Duration) -> Result<Option<Message>> {
        self.pump_until(deadline, false)
    }

    /// [`pump`](Self::pump); with `stop_on_event`, it also returns (`None`, before the
    /// deadline) as soon as a watch event has been queued, keeping any bytes not yet framed
    /// for the next call.
    fn pump_until(&mut self, deadline: Duration, stop_on_event: bool) -> Result<Option<Message>> {
        let mut budget = DRAIN_BUDGET;
        loop {
            while self.rx_pos < self.rx_len {
                let input = self.rx.get(self.rx_pos..self.rx_len).unwrap_or(&[]);
                let (used, msg) = match self.framer.push(input) {
                    Ok(r) => r,
                    Err(e) => return Err(self.fail(ProtocolError::Framing(e).into())),
                };
                self.rx_pos += used;
                if let Some(m) = msg {
                    if m.header.ty == MsgType::WatchEvent.as_u32() {
                        self.queue_event(&m);
                        if stop_on_event {
                            return Ok(None);
                        }
                    } else {
                        return Ok(Some(m));
                    }
                }
            }
            self.rx_pos = 0;
            self.rx_len = 0;
            let remaining = deadline.saturating_sub(self.transport.now());
            if remaining.is_zero() && budget == 0 {
                return Ok(None);
            }
            let n = match self.transport.recv(&mut self.rx, remaining) {
                Ok(n) => n.min(self.rx.len()),
                Err(TransportError::Timeout) => 0,
                Err(e) => return Err(self.fail(e.into())),
            };
            if n == 0 {
                if remaining.is_zero() || self.transport.now() >= deadline {
                    return Ok(None);
                }
                continue;
            }
            if remaining.is_zero() {
                budget = budget.saturating_sub(n);
            }
            self.rx_len = n;
        }
    }

    fn queue_event(&mut self, m: &Message) {
        match Response::decode(MsgType::WatchEvent, &m.payload) {
            Ok(Response::WatchEvent { path, token }) => self
                .watches
                .push(WatchEvent { path, token }, &mut self.stats),
            _ => self.stats.events_malformed += 1,
        }
    }

    /// A reply that arrived while no request was waiting for it: a late one is discarded,
    /// anything else is a protocol error.
    fn stray_reply(&mut self, m: &Message) -> Result<()> {
        if let Some(i) = self.abandoned.iter().position(|&id| id == m.header.req_id) {
            self.abandoned.remove(i);
            self.stats.replies_discarded += 1;
            return Ok(());
        }
        Err(ProtocolError::UnexpectedReply {
            req_id: m.header.req_id,
            ty: m.header.ty,
        }
        .into())
    }

    /// Send `req` in transaction `tx_id` (0: none) and wait for its reply. An `XS_ERROR`
    /// reply is `Err(Xs(..))`. The building block of every other call.
    pub fn request(&mut self, tx_id: u32, req: &Request) -> Result<Response> {
        self.alive()?;
        let ty = req.msg_type();
        let req_id = self.next_req_id();
        let bytes = req
            .to_message(req_id, tx_id)
            .and_then(|m| m.encode())
            .map_err(XsClientError::BadRequest)?;
        let deadline = self.transport.now().saturating_add(self.config.timeout);
        self.stats.requests_sent += 1;
        if let Err(e) = self.transport.send(&bytes, self.config.timeout) {
            let e = XsClientError::from(e);
            // A part of the message may be in the stream: it is out of sync, unless the ring
            // was reset (which discards partial messages).
            if e == XsClientError::ConnectionReset {
                self.reset();
            } else {
                self.dead = Some(e.clone());
            }
            return Err(e);
        }
        let m = loop {
            let m = match self.pump(deadline) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.abandon(req_id);
                    return Err(XsClientError::Timeout);
                }
                Err(e) => {
                    if !e.is_fatal() {
                        self.abandon(req_id);
                    }
                    return Err(e);
                }
            };
            if m.header.req_id == req_id {
                break m;
            }
            if let Err(e) = self.stray_reply(&m) {
                self.abandon(req_id);
                return Err(e);
            }
        };
        if m.header.ty != ty.as_u32() && m.header.ty != MsgType::Error.as_u32() {
            return Err(ProtocolError::WrongType {
                expected: ty,
                got: m.header.ty,
            }
            .into());
        }
        match Response::from_message(&m) {
            Ok(Response::Error(e)) => Err(XsClientError::Xs(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(ProtocolError::Malformed(e).into()),
        }
    }

    fn request_ok(&mut self, req: &Request) -> Result<()> {
        let ty = req.msg_type();
        match self.request(0, req)? {
            Response::Ok(t) if t == ty => Ok(()),
            other => Err(ProtocolError::WrongType {
                expected: ty,
                got: other.msg_type().as_u32(),
            }
            .into()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Transactions.

    /// `XS_TRANSACTION_START`: a transaction handle. Commit or abort it; dropping it aborts
    /// (best effort).
    pub fn transaction_start(&mut self) -> Result<Transaction<'_, T>> {
        match self.request(0, &Request::TransactionStart)? {
            Response::TransactionStart(0) => {
                Err(XsClientError::Protocol(ProtocolError::ZeroTransactionId))
            }
            Response::TransactionStart(id) => Ok(Transaction::new(self, id)),
            other => Err(ProtocolError::WrongType {
                expected: MsgType::TransactionStart,
                got: other.msg_type().as_u32(),
            }
            .into()),
        }
    }

    /// `XS_TRANSACTION_END` for transaction `tx_id` (`commit`: `T`, else `F`).
    pub fn transaction_end(&mut self, tx_id: u32, commit: bool) -> Result<()> {
        match self.request(tx_id, &Request::TransactionEnd { commit })? {
            Response::Ok(MsgType::TransactionEnd) => Ok(()),
            other => Err(ProtocolError::WrongType {
                expected: MsgType::TransactionEnd,
                got: other.msg_type().as_u32(),
            }
            .into()),
        }
    }

    /// Run `f` in a transaction and commit it; if `f` or the commit fails with `EAGAIN` (a
    /// conflicting change), run it again in a new transaction, up to
    /// [`ClientConfig::tx_retries`] times, then return the `EAGAIN`. Any other error from `f`
    /// aborts the transaction and is returned. `f` may run several times: it must not have
    /// effects outside the transaction that cannot be repeated.
    pub fn transact<R, F>(&mut self, mut f: F) -> Result<R>
    where
        F: FnMut(&mut Transaction<'_, T>) -> Result<R>,
    {
        let mut retries = 0;
        loop {
            let mut tx = self.transaction_start()?;
            let outcome = match f(&mut tx) {
                Ok(v) => tx.commit().map(|()| v),
                Err(e) => {
                    // The transaction's own error wins over a failure to abort it.
                    let _ = tx.abort();
                    Err(e)
                }
            };
            match outcome {
                Err(XsClientError::Xs(XsError::Eagain)) if retries < self.config.tx_retries => {
                    retries += 1;
                }
                other => return other,
            }
        }
    }

    /// [`Store::gather`] in one transaction (retried on `EAGAIN` like [`transact`](Self::transact)):
    /// every value from the same snapshot.
    pub fn gather_atomic(&mut self, dir: &str, keys: &[&str]) -> Result<Gathered> {
        self.transact(|tx| tx.gather(dir, keys))
    }

    // -----------------------------------------------------------------------------------------
    // Watches.

    /// `XS_WATCH`: watch `path` (a node path, relative or absolute, or `@introduceDomain` /
    /// `@releaseDomain`) and its children; events come with `token`. The server fires the
    /// watch once right away. Several watches may share a token.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        let path = Path::new(path).map_err(|e| XsClientError::BadRequest(e.into()))?;
        let req = Request::Watch {
            path,
            token: String::from(token),
        };
        // Registered first: the initial event may arrive before the reply.
        self.watches.register(token);
        let r = self.request_ok(&req);
        // EEXIST: the connection has this watch already (registered before a `reset` that
        // the server did not share) — its events will come, so it stays registered here.
        let exists = matches!(r, Err(XsClientError::Xs(XsError::Eexist)));
        if r.is_err() && self.dead.is_none() && !exists {
            self.watches.unregister(token);
        }
        r
    }

    /// `XS_UNWATCH`. When the last watch with `token` goes, so do its queued events.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        let path = Path::new(path).map_err(|e| XsClientError::BadRequest(e.into()))?;
        let req = Request::Unwatch {
            path,
            token: String::from(token),
        };
        self.request_ok(&req)?;
        self.watches.unregister(token);
        Ok(())
    }

    /// `XS_RESET_WATCHES`: drop every watch (and transaction) of this connection, and every
    /// queued event.
    pub fn reset_watches(&mut self) -> Result<()> {
        self.request_ok(&Request::ResetWatches)?;
        self.watches.clear();
        Ok(())
    }

    /// Read whatever the transport has now, without waiting, and queue the watch events.
    /// Returns how many events are queued (for all tokens). For event loops.
    pub fn poll_watch_events(&mut self) -> Result<usize> {
        self.alive()?;
        let now = self.transport.now();
        while let Some(m) = self.pump(now)? {
            self.stray_reply(&m)?;
        }
        Ok(self.watches.pending(None))
    }

    /// The oldest queued event for `token` (or for any token), without I/O.
    pub fn take_watch_event(&mut self, token: Option<&str>) -> Option<WatchEvent> {
        self.watches.pop(token)
    }

    /// Queued events for `token` (or all tokens), without I/O.
    pub fn pending_watch_events(&self, token: Option<&str>) -> usize {
        self.watches.pending(token)
    }

    /// Events dropped from `token`'s queue because it was full (since its first watch).
    pub fn dropped_watch_events(&self, token: &str) -> u64 {
        self.watches.dropped(token)
    }

    /// The next event for `token` (or any token): a queued one, else wait up to `timeout`
    /// for one. `Ok(None)` if none came in time.
    pub fn next_watch_event(
        &mut self,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<WatchEvent>> {
        if let Some(ev) = self.watches.pop(token) {
            return Ok(Some(ev));
        }
        self.alive()?;
        let deadline = self.transport.now().saturating_add(timeout);
        loop {
            // Returns at the first queued event (ours or another token's), a stray reply, or
            // the deadline: an event that arrives early is delivered at once.
            let got = self.pump_until(deadline, true)?;
            if let Some(ev) = self.watches.pop(token) {
                // A reply pumped together with the event is still judged.
                if let Some(m) = got {
                    self.stray_reply(&m)?;
                }
                return Ok(Some(ev));
            }
            match got {
                Some(m) => self.stray_reply(&m)?,
                None if self.transport.now() >= deadline => return Ok(None),
                None => {} // another token's event: keep waiting for ours
            }
        }
    }

    /// The port an event loop waits on before calling [`poll_watch_events`](Self::poll_watch_events)
    /// (the transport's, if it has one).
    pub fn event_port(&self) -> Option<EvtchnPort> {
        self.transport.event_port()
    }

    // -----------------------------------------------------------------------------------------
    // Domains (toolstack operations; xenstored allows most of them to dom0 only).

    /// `XS_GET_DOMAIN_PATH`: `/local/domain/<domid>`.
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<Path> {
        match self.request(0, &Request::GetDomainPath(domid))? {
            Response::GetDomainPath(p) => Ok(p),
            other => Err(ProtocolError::WrongType {
                expected: MsgType::GetDomainPath,
                got: other.msg_type().as_u32(),
            }
            .into()),
        }
    }

    /// `XS_INTRODUCE`: tell xenstored about `domid`'s ring page (`mfn`) and its unbound
    /// event-channel `port`.
    pub fn introduce(&mut self, domid: DomId, mfn: u64, port: EvtchnPort) -> Result<()> {
        self.request_ok(&Request::Introduce { domid, mfn, port })
    }

    /// `XS_RELEASE`: xenstored disconnects from `domid`.
    pub fn release(&mut self, domid: DomId) -> Result<()> {
        self.request_ok(&Request::Release(domid))
    }

    /// `XS_RESUME`: `@releaseDomain` fires again when `domid` shuts down.
    pub fn resume(&mut self, domid: DomId) -> Result<()> {
        self.request_ok(&Request::Resume(domid))
    }

    /// `XS_IS_DOMAIN_INTRODUCED`.
    pub fn is_domain_introduced(&mut self, domid: DomId) -> Result<bool> {
        match self.request(0, &Request::IsDomainIntroduced(domid))? {
            Response::IsDomainIntroduced(b) => Ok(b),
            other => Err(ProtocolError::WrongType {
                expected: MsgType::IsDomainIntroduced,
                got: other.msg_type().as_u32(),
            }
            .into()),
        }
    }

    /// `XS_SET_TARGET`: `domid` (a device model) gets `target`'s privileges.
    pub fn set_target(&mut self, domid: DomId, target: DomId) -> Result<()> {
        self.request_ok(&Request::SetTarget { domid, target })
    }

    /// `XS_CONTROL`: an implementation-specific command; the raw reply.
    pub fn control(&mut self, command: &str, params: &[u8]) -> Result<Vec<u8>> {
        let req = Request::Control {
            command: String::from(command),
            params: params.to_vec(),
        };
        match self.request(0, &req)? {
            Response::Control(v) => Ok(v),
            other => Err(ProtocolError::WrongType {
                expected: MsgType::Control,
                got: other.msg_type().as_u32(),
            }
            .into()),
        }
    }
}

impl<T: Transport> Store for Client<T> {
    fn call(&mut self, req: &Request) -> Result<Response> {
        self.request(0, req)
    }
}
