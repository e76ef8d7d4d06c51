//! blkif: blkfront, blkback and storage backends (filled by the block issue).
#![no_std]

pub mod abi;

pub use xen_platform as platform;
