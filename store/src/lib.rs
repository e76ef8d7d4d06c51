//! XenStore: xs_wire codec, client, in-memory xenstored (filled by the XenStore issue).
#![no_std]

pub use xen_platform as platform;
