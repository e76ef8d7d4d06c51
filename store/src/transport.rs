//! Byte-stream transports for the XenStore [`Client`](crate::client::Client).
//!
//! XenStore messages travel over a reliable byte stream in both directions: a Unix socket to
//! xenstored (how dom0 tools connect; std, in a host crate) or a guest's shared ring page
//! ([`RingTransport`], no_std). The client frames messages itself, so a transport only moves
//! bytes, and never waits without a limit.
//!
//! # The contract
//! * [`send`](Transport::send) delivers *all* the bytes or fails. It may wait for room, at
//!   most `timeout`. On failure an unknown prefix may have been sent: the stream is then out of
//!   sync and the client treats the connection as dead.
//! * [`recv`](Transport::recv) returns `Ok(n)` with `n > 0` bytes as soon as any are
//!   available, waiting at most `timeout` for the first; `Ok(0)` means nothing arrived in
//!   time. `timeout == Duration::ZERO` is a non-blocking poll. A dead peer is an error
//!   ([`TransportError::PeerGone`], [`TransportError::Closed`]), never `Ok(0)`.
//! * [`now`](Transport::now) is a monotonic clock; the client computes its deadlines with it
//!   (so that a server flooding watch events cannot keep a request waiting forever).
//!
//! The Unix socket transport, about 30 lines of std code, is `xen_store_host::UnixTransport`
//! (one copy, used by every host tool and test):
//!
//! ```
//! use xen_store::client::Client;
//! let (a, _server) = std::os::unix::net::UnixStream::pair().unwrap();
//! let client = Client::new(xen_store_host::UnixTransport::new(a));
//! # drop(client);
//! ```

use alloc::boxed::Box;
use core::fmt;
use core::time::Duration;

use crate::platform::abi::xs::{
    XENSTORE_CONNECTED, XENSTORE_SERVER_FEATURE_ERROR, XENSTORE_SERVER_FEATURE_RECONNECTION,
};
use crate::platform::xs_ring::XsGuestRing;
use crate::platform::{Clock, Error as PlatformError, Events};
use crate::EvtchnPort;

/// Why a [`Transport`] operation failed. The client reports each as the
/// [`XsClientError`](crate::client::XsClientError) variant of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// No room to send, or (for a connect) no answer, within the timeout.
    Timeout,
    /// The server is gone: its event channel was closed or its domain destroyed.
    PeerGone,
    /// The server closed the connection (end of stream on a socket).
    Closed,
    /// The shared ring's indexes are inconsistent (`prod - cons > 1024`).
    RingCorrupt,
    /// The server set the ring's `error` field (`XENSTORE_ERROR_*`) and stopped serving.
    ServerError(u32),
    /// The ring was reset (`XENSTORE_RECONNECT`): what was in flight is gone.
    ConnectionReset,
    /// A platform call failed in another way.
    Platform(PlatformError),
    /// A host transport's I/O error (the raw OS errno, or -1 if none).
    Io(i32),
    /// The transport or server does not support the operation.
    Unsupported,
}

impl From<PlatformError> for TransportError {
    /// `Timeout`, `PeerGone` and `RingOverflow` have their own variants.
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::Timeout => TransportError::Timeout,
            PlatformError::PeerGone => TransportError::PeerGone,
            PlatformError::RingOverflow => TransportError::RingCorrupt,
            other => TransportError::Platform(other),
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Timeout => f.write_str("timed out"),
            TransportError::PeerGone => f.write_str("the XenStore server is gone"),
            TransportError::Closed => f.write_str("the XenStore server closed the connection"),
            TransportError::RingCorrupt => f.write_str("corrupt XenStore ring indexes"),
            TransportError::ServerError(e) => {
                write!(f, "the XenStore server reported ring error {e}")
            }
            TransportError::ConnectionReset => f.write_str("the XenStore ring was reset"),
            TransportError::Platform(e) => write!(f, "platform error: {e}"),
            TransportError::Io(e) => write!(f, "I/O error (errno {e})"),
            TransportError::Unsupported => f.write_str("not supported by the transport"),
        }
    }
}

impl core::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            TransportError::Platform(e) => Some(e),
            _ => None,
        }
    }
}

/// A reliable byte stream to a XenStore server. See the [module docs](self) for the contract.
pub trait Transport {
    /// Monotonic time since an arbitrary fixed point.
    fn now(&self) -> Duration;

    /// Send all of `bytes`, waiting at most `timeout` for room.
    fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), TransportError>;

    /// Receive at least one byte into `buf`, waiting at most `timeout`; `Ok(0)`: none came.
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError>;

    /// The event-channel port an event loop should wait on before polling this transport
    /// again ([`Client::poll_watch_events`](crate::client::Client::poll_watch_events)), if it
    /// has one.
    fn event_port(&self) -> Option<EvtchnPort> {
        None
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), TransportError> {
        (**self).send(bytes, timeout)
    }
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError> {
        (**self).recv(buf, timeout)
    }
    fn event_port(&self) -> Option<EvtchnPort> {
        (**self).event_port()
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), TransportError> {
        (**self).send(bytes, timeout)
    }
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError> {
        (**self).recv(buf, timeout)
    }
    fn event_port(&self) -> Option<EvtchnPort> {
        (**self).event_port()
    }
}

/// The guest side of the xenstore ring page (`xenstore_domain_interface`) and its event
/// channel, as a [`Transport`].
///
/// * `send` writes as much as fits into the 1024-byte request ring, notifies, and waits on the
///   port for room for the rest; `recv` reads what the response ring holds, or waits on the
///   port. Every wait is bounded by the timeout given; each reader clears the port's pending
///   bit *before* looking at the ring again, as `SCHEDOP_poll` users must, so no wakeup is lost.
///   The daemon is notified after every index update (xenstore-ring.txt).
/// * A dead peer ([`Events::wait`] or [`Events::notify`] failing with `PeerGone`) is an error at
///   once; corrupt indexes are [`TransportError::RingCorrupt`].
/// * `server_features` is honoured: with `XENSTORE_SERVER_FEATURE_ERROR`, a non-zero `error`
///   field is [`TransportError::ServerError`]; with `XENSTORE_SERVER_FEATURE_RECONNECTION`, a
///   `connection` field reading `XENSTORE_RECONNECT` means a reset is in progress: the
///   transport ignores every other field, waits (bounded) for `XENSTORE_CONNECTED`, and reports
///   [`TransportError::ConnectionReset`]. [`reconnect`](Self::reconnect) starts such a reset.
///   A reset that began and completed between two looks at the ring (someone else set
///   `XENSTORE_RECONNECT` and the daemon was quick) is caught too: `req_prod` and `rsp_cons`
///   are written only by this side, except by a reset, so when either differs from the value
///   this transport last left there the ring was reset and the call also ends in
///   `ConnectionReset` (a reset that happens to restore the very same indexes cannot be told
///   from no reset). Without the features those fields are not looked at.
///
/// The platform `P` provides the event channel and the clock (in images one object provides
/// both; in tests a `xen_sim::Domain`).
pub struct RingTransport<'a, P: Events + Clock + ?Sized> {
    ring: XsGuestRing,
    platform: &'a P,
    port: EvtchnPort,
    /// `(req_prod, rsp_cons)` as this side last left them: only a reset changes them behind
    /// our back.
    owned: (u32, u32),
}

impl<P: Events + Clock + ?Sized> core::fmt::Debug for RingTransport<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RingTransport")
            .field("ring", &self.ring)
            .field("port", &self.port)
            .finish()
    }
}

impl<'a, P: Events + Clock + ?Sized> RingTransport<'a, P> {
    /// A transport over `ring`, notifying and waiting on the local `port` (the guest's end of
    /// the xenstore event channel: `HVM_PARAM_STORE_EVTCHN` / `start_info.store_evtchn`).
    ///
    /// The ring is used as found; call [`connect`](Self::connect) to wait out a reset someone
    /// else started (e.g. the toolstack of a dom0less guest) before the first request.
    pub fn new(ring: XsGuestRing, platform: &'a P, port: EvtchnPort) -> Self {
        let ix = ring.indexes();
        RingTransport {
            ring,
            platform,
            port,
            owned: (ix.req_prod, ix.rsp_cons),
        }
    }

    /// Remember the indexes this side owns, after it moved them (or accepted a reset).
    fn own_indexes(&mut self) {
        let ix = self.ring.indexes();
        self.owned = (ix.req_prod, ix.rsp_cons);
    }

    /// The ring.
    pub fn ring(&self) -> &XsGuestRing {
        &self.ring
    }

    /// The local event-channel port.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// After a real resume of this domain (`xl restore`, the far end of a migration): the
    /// ring is on the same page, but the connection is a new one — xenstored knows none of
    /// our watches or transactions, the toolstack made a new event channel (`port`), and the
    /// restore may have cleared the page. Take the new port and the indexes as found. Call
    /// [`Client::reset`](crate::client::Client::reset) too, and register watches again.
    pub fn resumed(&mut self, port: EvtchnPort) {
        self.port = port;
        self.own_indexes();
    }

    /// Give the ring back.
    pub fn into_ring(self) -> XsGuestRing {
        self.ring
    }

    /// Make sure the ring is usable: if the daemon advertises reconnection and a reset is in
    /// progress, wait (at most `timeout`) until it completes; fail if the daemon reports an
    /// error.
    pub fn connect(&mut self, timeout: Duration) -> Result<(), TransportError> {
        let deadline = self.deadline(timeout);
        let r = match self.check(deadline) {
            Err(TransportError::ConnectionReset) => Ok(()),
            other => other,
        };
        self.own_indexes();
        r
    }

    /// Ask the daemon to reset the ring (xenstore-ring.txt, "The ring reconnection feature"):
    /// set `connection = XENSTORE_RECONNECT`, notify, and wait (at most `timeout`) until the
    /// daemon sets it back to `XENSTORE_CONNECTED`. Afterwards both queues are empty and the
    /// connection has no watches or transactions; call
    /// [`Client::reset`](crate::client::Client::reset) to match.
    ///
    /// [`TransportError::Unsupported`] if the daemon does not advertise
    /// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
    pub fn reconnect(&mut self, timeout: Duration) -> Result<(), TransportError> {
        if self.ring.server_features() & XENSTORE_SERVER_FEATURE_RECONNECTION == 0 {
            return Err(TransportError::Unsupported);
        }
        let deadline = self.deadline(timeout);
        self.ring.request_reconnect();
        self.notify()?;
        self.wait_connected(deadline)?;
        self.own_indexes();
        self.check_error()
    }

    fn deadline(&self, timeout: Duration) -> Duration {
        self.platform.now().saturating_add(timeout)
    }

    fn notify(&self) -> Result<(), TransportError> {
        self.platform
            .notify(self.port)
            .map_err(TransportError::from)
    }

    /// Wait for an event until `deadline`: `Ok(true)` woken, `Ok(false)` deadline passed.
    fn wait(&self, deadline: Duration) -> Result<bool, TransportError> {
        let remaining = deadline.saturating_sub(self.platform.now());
        if remaining.is_zero() {
            return Ok(false);
        }
        match self.platform.wait(&[self.port], Some(remaining)) {
            Ok(_) => Ok(true),
            Err(PlatformError::Timeout) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn check_error(&self) -> Result<(), TransportError> {
        if self.ring.server_features() & XENSTORE_SERVER_FEATURE_ERROR != 0 {
            let e = self.ring.error();
            if e != 0 {
                return Err(TransportError::ServerError(e));
            }
        }
        Ok(())
    }

    /// Error field, then connection state. A reset in progress is waited out and reported
    /// as `ConnectionReset`.
    fn check(&mut self, deadline: Duration) -> Result<(), TransportError> {
        self.check_error()?;
        if self.ring.server_features() & XENSTORE_SERVER_FEATURE_RECONNECTION == 0 {
            return Ok(());
        }
        // `connection` first: a daemon completes a reset by rewriting the indexes and then
        // setting XENSTORE_CONNECTED, so once that is seen the new indexes are too.
        if self.ring.connection() != XENSTORE_CONNECTED {
            self.wait_connected(deadline)?;
            self.check_error()?;
            self.own_indexes();
            return Err(TransportError::ConnectionReset);
        }
        let ix = self.ring.indexes();
        if (ix.req_prod, ix.rsp_cons) != self.owned {
            // Reset and reconnected while we were not looking.
            self.own_indexes();
            return Err(TransportError::ConnectionReset);
        }
        Ok(())
    }

    /// Wait until `connection == XENSTORE_CONNECTED`, ignoring every other field.
    fn wait_connected(&mut self, deadline: Duration) -> Result<(), TransportError> {
        loop {
            if self.ring.connection() == XENSTORE_CONNECTED {
                return Ok(());
            }
            self.platform.clear(self.port);
            if self.ring.connection() == XENSTORE_CONNECTED {
                return Ok(());
            }
            if !self.wait(deadline)? {
                return Err(TransportError::Timeout);
            }
        }
    }
}

impl<P: Events + Clock + ?Sized> Transport for RingTransport<'_, P> {
    fn now(&self) -> Duration {
        self.platform.now()
    }

    fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), TransportError> {
        let deadline = self.deadline(timeout);
        let mut rest = bytes;
        loop {
            self.check(deadline)?;
            let n = self.ring.write(rest)?;
            if n > 0 {
                // Moved by exactly n from the value check() just compared (n <= 1024).
                self.owned.0 = self.owned.0.wrapping_add(n as u32);
                rest = rest.get(n..).unwrap_or(&[]);
                self.notify()?;
            }
            if rest.is_empty() {
                return Ok(());
            }
            // Full: clear, look again, then sleep until the daemon consumed something.
            self.platform.clear(self.port);
            if self.ring.req_space()? > 0 {
                continue;
            }
            if !self.wait(deadline)? {
                return Err(TransportError::Timeout);
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.deadline(timeout);
        let mut cleared = false;
        loop {
            self.check(deadline)?;
            let n = self.ring.read(buf)?;
            if n > 0 {
                self.owned.1 = self.owned.1.wrapping_add(n as u32);
                self.notify()?;
                return Ok(n);
            }
            if !cleared {
                // Clear the pending bit, then look at the ring once more before sleeping:
                // bytes published between the read above and the clear are seen now, and any
                // published later set the bit again.
                self.platform.clear(self.port);
                cleared = true;
                continue;
            }
            if !self.wait(deadline)? {
                return Ok(0);
            }
            cleared = false;
        }
    }

    fn event_port(&self) -> Option<EvtchnPort> {
        Some(self.port)
    }
}
