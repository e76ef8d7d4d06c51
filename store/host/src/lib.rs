//! XenStore on a host (std): what dom0 tools, host tests and benchmarks need around the
//! no_std [`xen_store`] client.
//!
//! * [`UnixTransport`]: a Unix-socket [`Transport`] (how dom0 tools talk to xenstored).
//! * [`OwnedRing`]: a ring-page [`Transport`] that owns its platform and page mapping (the
//!   [`RingTransport`] of `xen_store` borrows them), so that a domU client can be boxed and
//!   handed around like a socket client.
//! * [`real`]: Debian's real C xenstored (Xen 4.17) started without a hypervisor under the
//!   `ci/real-xenstored` shim — dom0 over its socket, domUs over real shared ring pages.
//! * [`conformance`]: one suite of XenStore behaviour, written against a [`conformance::Peer`]
//!   (the real daemon, and our own), defining what our server must do.
//! * [`xenstored`]: our xenstored — the in-memory [`xen_store::server::Store`] served over
//!   Unix sockets and over the ring pages and event channels of simulated (`xen_sim`)
//!   domains; [`ours`] is it as a conformance peer.
//! * The `xs` binary: a CLI in the spirit of xenstore-utils (read, write, ls, rm, watch,
//!   chmod) against a socket; the `xenstored` binary: our daemon on a Unix socket.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod conformance;
pub mod ours;
pub mod real;
pub mod xenstored;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xen_platform::xs_ring::XsGuestRing;
use xen_platform::{Clock, Events};
use xen_store::client::TransportError;
use xen_store::transport::{RingTransport, Transport};
use xen_store::EvtchnPort;

/// The socket libxenstore connects to: `$XENSTORED_PATH`, else `/run/xenstored/socket`
/// (`xs_daemon_socket()`: the env var, else `XEN_RUN_STORED "/socket"`; Debian's
/// `/var/run` is `/run`).
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XENSTORED_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/run/xenstored/socket"),
    }
}

/// A connection to xenstored's Unix socket as a [`Transport`] (the connection is privileged:
/// xenstored treats socket clients as dom0).
///
/// Every wait is bounded by the timeout the client passes: `send` uses the socket's write
/// timeout, `recv` its read timeout (a zero timeout is a non-blocking read). The blocking mode
/// and write timeout are cached so that a request costs no extra system calls for them.
#[derive(Debug)]
pub struct UnixTransport {
    stream: UnixStream,
    t0: Instant,
    nonblocking: bool,
    write_timeout: Option<Duration>,
}

impl UnixTransport {
    /// Connect to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> std::io::Result<UnixTransport> {
        UnixStream::connect(path).map(UnixTransport::new)
    }

    /// Wrap a connected stream (left in blocking mode).
    pub fn new(stream: UnixStream) -> UnixTransport {
        UnixTransport {
            stream,
            t0: Instant::now(),
            nonblocking: false,
            write_timeout: None,
        }
    }

    /// The stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    fn set_nonblocking(&mut self, on: bool) -> Result<(), TransportError> {
        if self.nonblocking != on {
            self.stream.set_nonblocking(on).map_err(io_error)?;
            self.nonblocking = on;
        }
        Ok(())
    }
}

/// Map a socket error to the client's error: a timeout is `Timeout`, a peer that went away
/// is `Closed`, anything else the raw errno.
fn io_error(e: std::io::Error) -> TransportError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TransportError::Timeout,
        ErrorKind::BrokenPipe
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::NotConnected
        | ErrorKind::UnexpectedEof => TransportError::Closed,
        _ => TransportError::Io(e.raw_os_error().unwrap_or(-1)),
    }
}

impl Transport for UnixTransport {
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), TransportError> {
        self.set_nonblocking(false)?;
        // A zero write timeout would mean "none" to the socket: at least 1 ms.
        let t = Some(timeout.max(Duration::from_millis(1)));
        if self.write_timeout != t {
            self.stream.set_write_timeout(t).map_err(io_error)?;
            self.write_timeout = t;
        }
        self.stream.write_all(bytes).map_err(io_error)
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if timeout.is_zero() {
            self.set_nonblocking(true)?;
        } else {
            self.set_nonblocking(false)?;
            self.stream
                .set_read_timeout(Some(timeout))
                .map_err(io_error)?;
        }
        match self.stream.read(buf) {
            Ok(0) => Err(TransportError::Closed),
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(io_error(e)),
        }
    }
}

/// A guest's xenstore ring page and event channel as a [`Transport`] that owns everything it
/// uses: the platform `P` (event channel + clock), the [`XsGuestRing`], and whatever keeps
/// the page mapped (`keep`, dropped last).
///
/// `xen_store`'s [`RingTransport`] borrows its platform; this wrapper builds one around the
/// ring for each call (a few pointer moves), so a domU client can be a
/// `Client<Box<dyn Transport>>` like a socket client. The ring semantics are exactly
/// [`RingTransport`]'s.
pub struct OwnedRing<P: Events + Clock> {
    // Dropped in declaration order: the ring before the mapping that backs it.
    ring: Option<XsGuestRing>,
    platform: P,
    port: EvtchnPort,
    _keep: Box<dyn Send>,
}

impl<P: Events + Clock> std::fmt::Debug for OwnedRing<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedRing")
            .field("ring", &self.ring)
            .field("port", &self.port)
            .finish()
    }
}

impl<P: Events + Clock> OwnedRing<P> {
    /// A transport over `ring`, notifying and waiting on the local `port` of `platform`.
    /// `keep` owns the page mapping `ring` points into (the contract of
    /// [`XsGuestRing::new`] — valid for as long as the ring lives — is kept by holding it
    /// here until after the ring is dropped).
    pub fn new(ring: XsGuestRing, platform: P, port: EvtchnPort, keep: Box<dyn Send>) -> Self {
        OwnedRing {
            ring: Some(ring),
            platform,
            port,
            _keep: keep,
        }
    }

    /// The platform (event channel and clock).
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The local event-channel port.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// [`RingTransport::connect`]: wait out a ring reset in progress.
    pub fn connect(&mut self, timeout: Duration) -> Result<(), TransportError> {
        self.with(|t| t.connect(timeout))
    }

    /// [`RingTransport::reconnect`]: ask the daemon to reset the ring (then call
    /// [`Client::reset`](xen_store::client::Client::reset) on the client using it).
    pub fn reconnect(&mut self, timeout: Duration) -> Result<(), TransportError> {
        self.with(|t| t.reconnect(timeout))
    }

    fn with<R>(
        &mut self,
        f: impl FnOnce(&mut RingTransport<'_, P>) -> Result<R, TransportError>,
    ) -> Result<R, TransportError> {
        // Only None if an earlier call panicked half way: the connection is unusable.
        let ring = self.ring.take().ok_or(TransportError::Closed)?;
        let mut t = RingTransport::new(ring, &self.platform, self.port);
        let r = f(&mut t);
        self.ring = Some(t.into_ring());
        r
    }
}

impl<P: Events + Clock> Transport for OwnedRing<P> {
    fn now(&self) -> Duration {
        self.platform.now()
    }

    fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), TransportError> {
        self.with(|t| t.send(bytes, timeout))
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, TransportError> {
        self.with(|t| t.recv(buf, timeout))
    }

    fn event_port(&self) -> Option<EvtchnPort> {
        Some(self.port)
    }
}
