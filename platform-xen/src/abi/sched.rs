//! `sched.h`: `SCHEDOP_*` operations, their arguments and `SHUTDOWN_*` reasons.

use super::xen::GuestHandle;
use super::{EvtchnPort, Pod};

// ---------------------------------------------------------------------------------------------
// SCHEDOP_* (sched_op commands).
// ---------------------------------------------------------------------------------------------

/// `SCHEDOP_yield`: give up the CPU voluntarily. No argument.
pub const SCHEDOP_YIELD: u32 = 0;
/// `SCHEDOP_block`: block until an event is pending. No argument. Clears the vCPU's
/// `evtchn_upcall_mask` (sched.h), so upcalls are delivered afterwards.
pub const SCHEDOP_BLOCK: u32 = 1;
/// `SCHEDOP_shutdown` → [`SchedShutdown`] (passed by pointer).
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// `SCHEDOP_poll` → [`SchedPoll`]: wait for one of some ports, with a timeout.
pub const SCHEDOP_POLL: u32 = 3;
/// `SCHEDOP_remote_shutdown`: shut down another domain.
pub const SCHEDOP_REMOTE_SHUTDOWN: u32 = 4;
/// `SCHEDOP_shutdown_code` → [`SchedShutdown`]: record the reason without shutting down.
pub const SCHEDOP_SHUTDOWN_CODE: u32 = 5;
/// `SCHEDOP_watchdog`.
pub const SCHEDOP_WATCHDOG: u32 = 6;
/// `SCHEDOP_pin_override`.
pub const SCHEDOP_PIN_OVERRIDE: u32 = 7;

/// `struct sched_shutdown` (`SCHEDOP_shutdown`, `SCHEDOP_shutdown_code`): 4 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*` (C `unsigned int`).
    pub reason: u32,
}

/// `struct sched_poll` (`SCHEDOP_poll`): 24 bytes. Not `Pod` (guest handle).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedPoll {
    /// The ports to wait on (`XEN_GUEST_HANDLE(evtchn_port_t)`).
    pub ports: GuestHandle<EvtchnPort>,
    /// Number of ports.
    pub nr_ports: u32,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 4],
    /// Absolute system time (ns) to wake at; 0: no timeout.
    pub timeout: u64,
}

// ---------------------------------------------------------------------------------------------
// SHUTDOWN_* (enum sched_shutdown_reason).
// ---------------------------------------------------------------------------------------------

/// `SHUTDOWN_poweroff`: exited normally; clean up and kill.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_reboot`: clean up, kill, restart.
pub const SHUTDOWN_REBOOT: u32 = 1;
/// `SHUTDOWN_suspend`: clean up, save suspend info, kill.
pub const SHUTDOWN_SUSPEND: u32 = 2;
/// `SHUTDOWN_crash`: the domain crashed.
pub const SHUTDOWN_CRASH: u32 = 3;
/// `SHUTDOWN_watchdog`: restart because the watchdog expired.
pub const SHUTDOWN_WATCHDOG: u32 = 4;
/// `SHUTDOWN_soft_reset`: reset the domain's state while keeping its memory.
pub const SHUTDOWN_SOFT_RESET: u32 = 5;
/// `SHUTDOWN_MAX`: the largest valid reason.
pub const SHUTDOWN_MAX: u32 = 5;

// SAFETY: repr(C), one integer.
unsafe impl Pod for SchedShutdown {}

// Sizes measured from the installed Xen 4.17 headers (see ci/abi-oracle for every offset).
const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);
