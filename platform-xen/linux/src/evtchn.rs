//! [`Events`] over `/dev/xen/evtchn`.
//!
//! The driver binds ports for the open file (`IOCTL_EVTCHN_BIND_*`) and delivers an event by
//! queueing the port number (a `u32`) for `read()` and *disabling* the port until the port
//! number is written back. The platform keeps the Xen picture on top of that:
//!
//! * **pending**: a local set. Reading the file (non-blocking, whenever the platform looks)
//!   moves the delivered ports into it. A port stays pending, and the driver keeps it disabled
//!   (later events coalesce, as they do in Xen's pending bit), until [`Events::clear`] removes
//!   it and writes the port number back to re-enable delivery.
//! * **masked**: a local set too. A masked port can be pending but does not end a
//!   [`Events::wait`]; [`Events::unmask`] clears the mask and writes the port (re-enabling
//!   delivery if the driver had it disabled).
//! * **bound**: the ports bound through this file. Ports read from the file that are no longer
//!   bound (closed meanwhile) are dropped; operations on a port that is not bound fail with
//!   `NotFound`.
//!
//! Waiting ([`Events::wait`]) is `poll(2)` on the file, then a read of what it delivered. As
//! any thread may read the file (every `is_pending`/`clear` does), a thread asleep in `poll`
//! would not see ports another thread moved into the pending set meanwhile (the file no longer
//! looks readable to it): each waiter sleeps on an `eventfd` of its own as well, and whoever
//! adds ports to the pending set (or closes one) signals every waiter's.
//!
//! What the driver does not tell: `IOCTL_EVTCHN_NOTIFY` does not report a peer that closed its
//! end (`EVTCHNOP_send` to an unbound peer succeeds), and nothing is delivered when it does,
//! so [`Error::PeerGone`] never comes from this platform; a backend notices a gone frontend
//! through XenStore, as Linux's own backends do.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use xen_platform::{DomId, Error, Events, EvtchnPort, Result};

use crate::abi::{
    IoctlEvtchnBindInterdomain, IoctlEvtchnBindUnboundPort, IoctlEvtchnNotify, IoctlEvtchnUnbind,
    IOCTL_EVTCHN_BIND_INTERDOMAIN, IOCTL_EVTCHN_BIND_UNBOUND_PORT, IOCTL_EVTCHN_NOTIFY,
    IOCTL_EVTCHN_RESET, IOCTL_EVTCHN_UNBIND,
};
use crate::sys::{
    error_from_io, eventfd, eventfd_reset, eventfd_signal, ioctl, lock, poll_readable,
};
use crate::LinuxXen;

/// How long [`Scheduler::block`](xen_platform::Scheduler::block) without a timeout sleeps at
/// most (it is a hint to sleep, not a wait for something).
pub(crate) const BLOCK_BOUND: Duration = Duration::from_millis(10);

/// The local view of this file's ports.
#[derive(Debug, Default)]
pub(crate) struct EventState {
    bound: HashSet<EvtchnPort>,
    pending: HashSet<EvtchnPort>,
    masked: HashSet<EvtchnPort>,
    /// The eventfds of the threads in [`Events::wait`], each signalled when the pending set
    /// gains a port or a port is closed.
    sleepers: Vec<RawFd>,
}

impl EventState {
    fn wake_sleepers(&self) {
        for &fd in &self.sleepers {
            // SAFETY: a sleeper's eventfd stays open while it is in this list: `wait` removes
            // it (under the same lock) before giving the descriptor back.
            eventfd_signal(unsafe { BorrowedFd::borrow_raw(fd) });
        }
    }
}

impl LinuxXen {
    /// Move every port the driver has delivered into the pending set (non-blocking).
    fn drain(&self, st: &mut EventState) -> io::Result<()> {
        let mut added = false;
        let r = self.drain_into(st, &mut added);
        if added {
            st.wake_sleepers();
        }
        r
    }

    /// [`LinuxXen::drain`] without the wake-ups; `added` is set when a port became pending.
    fn drain_into(&self, st: &mut EventState, added: &mut bool) -> io::Result<()> {
        let mut buf = [0u32; 64];
        loop {
            // SAFETY: reads at most size_of_val(&buf) bytes into `buf`, which is alive and
            // writable across the call; the evtchn file is open for the life of `self`.
            let n = unsafe {
                libc::read(
                    self.evtchn.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    core::mem::size_of_val(&buf),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    // The delivery ring overflowed (it cannot while it has room for every
                    // bound port, as the driver sizes it): events were lost, and the ports
                    // they were for stay disabled. Start over and count every port pending;
                    // clearing each re-enables it. A spurious event costs a look at a ring.
                    Some(libc::EFBIG) => {
                        // SAFETY: IOCTL_EVTCHN_RESET takes no argument.
                        unsafe {
                            ioctl(
                                self.evtchn.as_fd(),
                                IOCTL_EVTCHN_RESET,
                                core::ptr::null_mut::<u8>(),
                            )
                        }?;
                        st.pending.extend(st.bound.iter().copied());
                        *added = true;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            let n = n as usize / core::mem::size_of::<u32>();
            for &port in &buf[..n] {
                if st.bound.contains(&port) {
                    *added |= st.pending.insert(port);
                }
            }
            if n < buf.len() {
                return Ok(());
            }
        }
    }

    /// Write `port` to the file: the driver re-enables delivery on it if it was disabled.
    fn reenable(&self, port: EvtchnPort) -> io::Result<()> {
        let bytes = port.to_ne_bytes();
        loop {
            // SAFETY: writes 4 bytes from a live local buffer to the open evtchn file.
            let n = unsafe { libc::write(self.evtchn.as_raw_fd(), bytes.as_ptr().cast(), 4) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Bind with `req` and record the new local port.
    ///
    /// # Safety
    /// `arg` must be the argument type `req` expects.
    unsafe fn bind<T>(&self, req: u32, arg: &mut T) -> Result<EvtchnPort> {
        // Locked across the ioctl: Xen marks a newly bound port pending, so the driver may
        // deliver it at once, and a read of the file before the port is in `bound` would drop
        // it (leaving it disabled for good).
        let mut st = lock(&self.events);
        // SAFETY: `arg` is of the type `req` expects (the caller guarantees it), alive and
        // writable across the call.
        let port = unsafe { ioctl(self.evtchn.as_fd(), req, arg as *mut T) }
            .map_err(|e| error_from_io(&e))? as EvtchnPort;
        st.bound.insert(port);
        st.pending.remove(&port);
        st.masked.remove(&port);
        Ok(port)
    }

    /// Whether any bound, unmasked port is pending (after reading what was delivered).
    pub(crate) fn any_event(&self) -> bool {
        let mut st = lock(&self.events);
        if self.drain(&mut st).is_err() {
            return true;
        }
        st.pending.iter().any(|p| !st.masked.contains(p))
    }
}

impl Events for LinuxXen {
    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort> {
        let mut arg = IoctlEvtchnBindUnboundPort {
            remote_domain: remote.into(),
        };
        // SAFETY: the argument type of IOCTL_EVTCHN_BIND_UNBOUND_PORT.
        unsafe { self.bind(IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut arg) }
    }

    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
    fn bind_interdomain(&self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort> {
        let mut arg = IoctlEvtchnBindInterdomain {
            remote_domain: remote.into(),
            remote_port,
        };
        // SAFETY: the argument type of IOCTL_EVTCHN_BIND_INTERDOMAIN.
        unsafe { self.bind(IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut arg) }
    }

    /// `IOCTL_EVTCHN_NOTIFY`. Never reports `PeerGone` (the driver does not).
    fn notify(&self, port: EvtchnPort) -> Result<()> {
        let mut arg = IoctlEvtchnNotify { port };
        // SAFETY: the argument type of IOCTL_EVTCHN_NOTIFY, alive across the call.
        unsafe { ioctl(self.evtchn.as_fd(), IOCTL_EVTCHN_NOTIFY, &mut arg) }
            .map(drop)
            .map_err(|e| error_from_io(&e))
    }

    /// `IOCTL_EVTCHN_UNBIND`; forgets the port's pending and mask state.
    fn close(&self, port: EvtchnPort) -> Result<()> {
        let mut arg = IoctlEvtchnUnbind { port };
        let mut st = lock(&self.events);
        // SAFETY: the argument type of IOCTL_EVTCHN_UNBIND, alive across the call.
        unsafe { ioctl(self.evtchn.as_fd(), IOCTL_EVTCHN_UNBIND, &mut arg) }
            .map_err(|e| error_from_io(&e))?;
        st.bound.remove(&port);
        st.pending.remove(&port);
        st.masked.remove(&port);
        // A thread waiting on the port returns (NotFound) rather than sleep on.
        st.wake_sleepers();
        Ok(())
    }

    /// Local: the port stops ending waits (the driver keeps delivering it).
    fn mask(&self, port: EvtchnPort) -> Result<()> {
        let mut st = lock(&self.events);
        if !st.bound.contains(&port) {
            return Err(Error::NotFound);
        }
        st.masked.insert(port);
        Ok(())
    }

    /// Clears the local mask and writes the port to the file (re-enabling delivery); a
    /// pending port then ends the waits on it.
    fn unmask(&self, port: EvtchnPort) -> Result<()> {
        let mut st = lock(&self.events);
        if !st.bound.contains(&port) {
            return Err(Error::NotFound);
        }
        if st.masked.remove(&port) && st.pending.contains(&port) {
            st.wake_sleepers();
        }
        self.reenable(port).map_err(|e| error_from_io(&e))
    }

    fn is_pending(&self, port: EvtchnPort) -> bool {
        let mut st = lock(&self.events);
        // A read error leaves the set as it was; the next look reads again.
        let _ = self.drain(&mut st);
        st.pending.contains(&port)
    }

    /// Removes the port from the pending set and, if it was there, writes it to the file so
    /// that the driver delivers its next event.
    fn clear(&self, port: EvtchnPort) -> bool {
        let mut st = lock(&self.events);
        let _ = self.drain(&mut st);
        let was = st.pending.remove(&port);
        if was {
            // Best effort: should the write fail, the port stays disabled in the driver and
            // its next event is not delivered; nothing better can be done from here.
            let _ = self.reenable(port);
        }
        was
    }

    /// `poll(2)` on the file until one of `ports` is pending and unmasked. As in the
    /// simulator: an empty `ports` sleeps for `timeout` (`Invalid` without one), and a port
    /// not bound through this platform is `NotFound`. Never `PeerGone` (see the module docs).
    fn wait(&self, ports: &[EvtchnPort], timeout: Option<Duration>) -> Result<EvtchnPort> {
        if ports.is_empty() && timeout.is_none() {
            return Err(Error::Invalid);
        }
        // A deadline too far to represent is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let waker = match lock(&self.wakers).pop() {
            Some(fd) => fd,
            None => eventfd().map_err(|e| error_from_io(&e))?,
        };
        lock(&self.events).sleepers.push(waker.as_raw_fd());
        let r = self.wait_until(ports, deadline, waker.as_fd());
        lock(&self.events)
            .sleepers
            .retain(|&fd| fd != waker.as_raw_fd());
        lock(&self.wakers).push(waker);
        r
    }
}

impl LinuxXen {
    /// The loop of [`Events::wait`] (`deadline` `None`: no limit), `waker` being this
    /// waiter's eventfd, already in the sleepers' list.
    fn wait_until(
        &self,
        ports: &[EvtchnPort],
        deadline: Option<Instant>,
        waker: BorrowedFd<'_>,
    ) -> Result<EvtchnPort> {
        loop {
            {
                let mut st = lock(&self.events);
                self.drain(&mut st).map_err(|e| error_from_io(&e))?;
                // Whatever made it readable is in the set now and checked below; changes made
                // after the lock is released signal it again.
                eventfd_reset(waker);
                if ports.iter().any(|p| !st.bound.contains(p)) {
                    return Err(Error::NotFound);
                }
                if let Some(&p) = ports
                    .iter()
                    .find(|p| st.pending.contains(p) && !st.masked.contains(p))
                {
                    return Ok(p);
                }
            }
            let remaining = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout);
                    }
                    Some(d - now)
                }
                None => None,
            };
            poll_readable(&[self.evtchn.as_fd(), waker], remaining)
                .map_err(|e| error_from_io(&e))?;
        }
    }
}
