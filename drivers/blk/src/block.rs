//! The block vocabulary both ends share: [`Op`], [`Completion`], [`BlkError`], [`SECTOR`].
//!
//! An application submits `Op<Buffer>`s to a blkfront device (`front::BlockDevice`); blkback
//! submits `Op<Vec<u8>>`s to the disk it serves (`storage::Storage`). The op, its completion,
//! its error and its sector unit are the same in both; only the buffer differs — a blkfront
//! buffer is page-aligned memory the frontend can grant, a storage buffer plain heap memory
//! blkback copies the peer's pages into and out of.
//!
//! # Units
//! Every sector number and count is in 512-byte units ([`SECTOR`]), as on the wire (blkif.h as
//! clarified in 2024, Xen commit 221f2748e8: `sectors`, `sector_number`, `nr_sectors` and
//! `first_sect`/`last_sect` are always 512-byte units, whatever `sector-size` says). A disk's
//! logical block size (`sector-size`) only says what ops must be aligned to. Both ends take
//! `submit(tag, op)`.

use core::fmt;

/// The unit of every sector number and count: 512 bytes.
pub const SECTOR: u64 = 512;

/// One operation on a disk, carrying its buffer `B` (if any) until it completes.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<B> {
    /// Fill `buf` (a whole number of logical blocks) from `sector` on.
    Read {
        /// First sector (512-byte units).
        sector: u64,
        /// Filled by the disk; returned in the completion.
        buf: B,
    },
    /// Write `buf` (a whole number of logical blocks) at `sector`.
    Write {
        /// First sector (512-byte units).
        sector: u64,
        /// The data; returned in the completion.
        buf: B,
    },
    /// Make every write completed before this op was submitted durable.
    Flush,
    /// `count` sectors from `sector` on are no longer needed.
    Discard {
        /// First sector (512-byte units).
        sector: u64,
        /// Number of sectors (512-byte units).
        count: u64,
        /// The discarded data must become unrecoverable (blkif `BLKIF_DISCARD_SECURE`; only
        /// where the disk offers it, `Unsupported` elsewhere).
        secure: bool,
    },
}

impl<B> Op<B> {
    /// Whether the op changes the disk (write, discard).
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Write { .. } | Op::Discard { .. })
    }

    /// The op's buffer, if it has one.
    pub fn into_buf(self) -> Option<B> {
        match self {
            Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// A finished op.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion<B> {
    /// The tag the op was submitted with.
    pub tag: u64,
    /// How it ended.
    pub result: Result<(), BlkError>,
    /// The op's buffer, given back (a read's filled when `result` is `Ok`); `None` for flush
    /// and discard — and, in blkfront, for a buffer a misbehaving backend still maps after
    /// answering (the frontend keeps such memory: it is never reused while granted).
    pub buf: Option<B>,
}

impl<B> Completion<B> {
    /// A completion of `op` with `result`, giving its buffer back.
    pub fn of(tag: u64, op: Op<B>, result: Result<(), BlkError>) -> Completion<B> {
        Completion {
            tag,
            result,
            buf: op.into_buf(),
        }
    }
}

/// Why a block operation failed, at either end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    /// The medium failed, or the backend answered `BLKIF_RSP_ERROR`.
    Io,
    /// The disk does not do this op (discard, secure discard, flush; `BLKIF_RSP_EOPNOTSUPP`).
    Unsupported,
    /// A write, flush or discard on a read-only disk.
    ReadOnly,
    /// The sector range is (partly) beyond the end, or overflows.
    OutOfRange,
    /// Not aligned to the disk's logical block size, or a buffer that is not a whole number of
    /// blocks.
    Misaligned,
    /// A buffer that is empty, not page aligned, or not ours to grant.
    BadBuffer,
    /// Too many requests outstanding: poll and submit again.
    Busy,
    /// The device is not connected (not yet, or closed).
    NotConnected,
    /// The device failed (a misbehaving or vanished backend); every outstanding request
    /// completes with this error.
    Failed,
    /// A blocking call did not complete within its timeout.
    Timeout,
    /// The platform refused an operation (out of pages or grant entries, ...).
    Platform(xen_platform::Error),
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlkError::Io => f.write_str("I/O error (BLKIF_RSP_ERROR)"),
            BlkError::Unsupported => f.write_str("operation not supported by the disk"),
            BlkError::ReadOnly => f.write_str("the disk is read-only"),
            BlkError::OutOfRange => f.write_str("sector range outside the disk"),
            BlkError::Misaligned => {
                f.write_str("not aligned to the logical block size, or not whole blocks")
            }
            BlkError::BadBuffer => f.write_str("buffer empty, not page aligned, or not ours"),
            BlkError::Busy => f.write_str("too many requests in flight"),
            BlkError::NotConnected => f.write_str("the device is not connected"),
            BlkError::Failed => f.write_str("the device failed (backend misbehaved or went away)"),
            BlkError::Timeout => f.write_str("timed out"),
            BlkError::Platform(e) => write!(f, "platform error: {e}"),
        }
    }
}

impl core::error::Error for BlkError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            BlkError::Platform(e) => Some(e),
            _ => None,
        }
    }
}
