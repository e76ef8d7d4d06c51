//! `event_channel.h`: `EVTCHNOP_*` operations and their argument structures.

use core::fmt;

use super::{DomId, EvtchnPort, Pod};

// ---------------------------------------------------------------------------------------------
// EVTCHNOP_* (event_channel_op commands).
// ---------------------------------------------------------------------------------------------

/// `EVTCHNOP_bind_interdomain` → [`EvtchnBindInterdomain`].
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// `EVTCHNOP_bind_virq`.
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// `EVTCHNOP_bind_pirq`.
pub const EVTCHNOP_BIND_PIRQ: u32 = 2;
/// `EVTCHNOP_close` → [`EvtchnClose`].
pub const EVTCHNOP_CLOSE: u32 = 3;
/// `EVTCHNOP_send` → [`EvtchnSend`].
pub const EVTCHNOP_SEND: u32 = 4;
/// `EVTCHNOP_status` → [`EvtchnStatus`].
pub const EVTCHNOP_STATUS: u32 = 5;
/// `EVTCHNOP_alloc_unbound` → [`EvtchnAllocUnbound`].
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// `EVTCHNOP_bind_ipi`.
pub const EVTCHNOP_BIND_IPI: u32 = 7;
/// `EVTCHNOP_bind_vcpu`.
pub const EVTCHNOP_BIND_VCPU: u32 = 8;
/// `EVTCHNOP_unmask` → [`EvtchnUnmask`].
pub const EVTCHNOP_UNMASK: u32 = 9;
/// `EVTCHNOP_reset`.
pub const EVTCHNOP_RESET: u32 = 10;
/// `EVTCHNOP_init_control` (FIFO ABI).
pub const EVTCHNOP_INIT_CONTROL: u32 = 11;
/// `EVTCHNOP_expand_array` (FIFO ABI).
pub const EVTCHNOP_EXPAND_ARRAY: u32 = 12;
/// `EVTCHNOP_set_priority` (FIFO ABI).
pub const EVTCHNOP_SET_PRIORITY: u32 = 13;

/// `EVTCHN_2L_NR_CHANNELS`: ports of the 2-level ABI on x86_64
/// (`sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64`).
pub const EVTCHN_2L_NR_CHANNELS: u32 = 8 * 8 * 64;

// ---------------------------------------------------------------------------------------------
// Operation arguments.
// ---------------------------------------------------------------------------------------------

/// `struct evtchn_alloc_unbound` (`EVTCHNOP_alloc_unbound`): 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    /// IN: the domain allocating the port (`DOMID_SELF`).
    pub dom: DomId,
    /// IN: the domain that may bind to it.
    pub remote_dom: DomId,
    /// OUT: the new port.
    pub port: EvtchnPort,
}

/// `struct evtchn_bind_interdomain` (`EVTCHNOP_bind_interdomain`): 12 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvtchnBindInterdomain {
    /// IN: the remote domain.
    pub remote_dom: DomId,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
    /// IN: its unbound port allocated for us.
    pub remote_port: EvtchnPort,
    /// OUT: our new port.
    pub local_port: EvtchnPort,
}

/// `struct evtchn_close` (`EVTCHNOP_close`): 4 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvtchnClose {
    /// IN: the port to close.
    pub port: EvtchnPort,
}

/// `struct evtchn_send` (`EVTCHNOP_send`): 4 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvtchnSend {
    /// IN: the local port whose peer is notified.
    pub port: EvtchnPort,
}

/// `struct evtchn_unmask` (`EVTCHNOP_unmask`): 4 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvtchnUnmask {
    /// IN: the port to unmask.
    pub port: EvtchnPort,
}

/// `EVTCHNSTAT_closed`: the channel is not in use.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNSTAT_unbound`: waiting for an interdomain connection.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNSTAT_interdomain`: connected to a remote domain.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// `EVTCHNSTAT_pirq`: bound to a physical IRQ.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// `EVTCHNSTAT_virq`: bound to a virtual IRQ.
pub const EVTCHNSTAT_VIRQ: u32 = 4;
/// `EVTCHNSTAT_ipi`: bound to a virtual IPI.
pub const EVTCHNSTAT_IPI: u32 = 5;

/// `evtchn_status.u.unbound` (`EVTCHNSTAT_unbound`): 2 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvtchnStatusUnbound {
    /// The domain that may bind.
    pub dom: DomId,
}

/// `evtchn_status.u.interdomain` (`EVTCHNSTAT_interdomain`): 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvtchnStatusInterdomain {
    /// The remote domain.
    pub dom: DomId,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
    /// The remote port.
    pub port: EvtchnPort,
}

/// `evtchn_status.u`: which member is valid depends on `status`. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub union EvtchnStatusU {
    /// `EVTCHNSTAT_unbound`.
    pub unbound: EvtchnStatusUnbound,
    /// `EVTCHNSTAT_interdomain`.
    pub interdomain: EvtchnStatusInterdomain,
    /// `EVTCHNSTAT_pirq`.
    pub pirq: u32,
    /// `EVTCHNSTAT_virq`.
    pub virq: u32,
}

impl Default for EvtchnStatusU {
    fn default() -> Self {
        Self {
            interdomain: EvtchnStatusInterdomain::default(),
        }
    }
}

impl fmt::Debug for EvtchnStatusU {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: every variant is Pod; `interdomain` spans all 8 bytes.
        let v = unsafe { self.interdomain };
        f.debug_tuple("EvtchnStatusU").field(&v).finish()
    }
}

/// `struct evtchn_status` (`EVTCHNOP_status`): 24 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EvtchnStatus {
    /// IN: the domain owning the port.
    pub dom: DomId,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 2],
    /// IN: the port.
    pub port: EvtchnPort,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: the vCPU the channel is bound to.
    pub vcpu: u32,
    /// OUT: details by `status`.
    pub u: EvtchnStatusU,
}

// SAFETY: repr(C), integers only, padding made explicit.
unsafe impl Pod for EvtchnAllocUnbound {}
// SAFETY: as above.
unsafe impl Pod for EvtchnBindInterdomain {}
// SAFETY: as above.
unsafe impl Pod for EvtchnClose {}
// SAFETY: as above.
unsafe impl Pod for EvtchnSend {}
// SAFETY: as above.
unsafe impl Pod for EvtchnUnmask {}
// SAFETY: as above.
unsafe impl Pod for EvtchnStatusUnbound {}
// SAFETY: as above.
unsafe impl Pod for EvtchnStatusInterdomain {}
// SAFETY: a union of Pod types; `interdomain` spans all 8 bytes.
unsafe impl Pod for EvtchnStatusU {}
// SAFETY: repr(C), integers and a Pod union, padding made explicit.
unsafe impl Pod for EvtchnStatus {}

// Sizes measured from the installed Xen 4.17 headers (see ci/abi-oracle for every offset).
const _: () = assert!(core::mem::size_of::<EvtchnBindInterdomain>() == 12);
const _: () = assert!(core::mem::size_of::<EvtchnStatus>() == 24);
