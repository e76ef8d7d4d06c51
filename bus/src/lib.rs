//! XenBus: device state machines, front and back attachment (filled by the XenBus issue).
#![no_std]

pub use xen_platform as platform;
