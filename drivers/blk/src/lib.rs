//! blkif: blkfront, blkback and storage backends (filled by the block issue).
#![no_std]

pub use xen_platform as platform;
