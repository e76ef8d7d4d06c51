//! control/shutdown driver: poweroff, reboot, suspend/resume (filled by the control issue).
#![no_std]

pub use xen_platform as platform;
