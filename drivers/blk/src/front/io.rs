//! Byte-addressed access to any [`BlockDevice`]: `embedded-io` `Read`, `Write` and `Seek`.
//!
//! Whole blocks (of the device's `sector_size`) at block-aligned positions go straight to the device (as many as fit the
//! caller's buffer); a partial block is read, or read-modified-written, through a
//! one-block scratch buffer. Reads and writes stop at the end of the device (a write there
//! fails with `OutOfRange`).

use alloc::vec;
use alloc::vec::Vec;

use embedded_io::{ErrorKind, ErrorType, Read, Seek, SeekFrom, Write};

use super::{BlkError, BlockDevice, SECTOR};

impl embedded_io::Error for BlkError {
    fn kind(&self) -> ErrorKind {
        match self {
            BlkError::Io | BlkError::Failed | BlkError::Platform(_) => ErrorKind::Other,
            BlkError::Unsupported => ErrorKind::Unsupported,
            BlkError::ReadOnly => ErrorKind::PermissionDenied,
            BlkError::OutOfRange | BlkError::Misaligned | BlkError::BadBuffer => {
                ErrorKind::InvalidInput
            }
            BlkError::Busy => ErrorKind::Interrupted,
            BlkError::NotConnected => ErrorKind::NotConnected,
            BlkError::Timeout => ErrorKind::TimedOut,
        }
    }
}

/// A [`BlockDevice`] as a byte stream with a position.
#[derive(Debug)]
pub struct BlockIo<D: BlockDevice> {
    dev: D,
    pos: u64,
    scratch: Vec<u8>,
}

impl<D: BlockDevice> BlockIo<D> {
    /// At position 0.
    pub fn new(dev: D) -> Self {
        let ss = dev.sector_size().max(1) as usize;
        BlockIo {
            dev,
            pos: 0,
            scratch: vec![0; ss],
        }
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Give the device back.
    pub fn into_inner(self) -> D {
        self.dev
    }

    /// The position.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn ss(&self) -> u64 {
        u64::from(self.dev.sector_size().max(1))
    }

    fn size(&self) -> u64 {
        self.dev.sectors().saturating_mul(SECTOR)
    }

    /// Bytes from the position to the end of the device, at most `want`.
    fn room(&self, want: usize) -> usize {
        let left = self.size().saturating_sub(self.pos);
        usize::try_from(left).map_or(want, |l| l.min(want))
    }
}

impl<D: BlockDevice> ErrorType for BlockIo<D> {
    type Error = BlkError;
}

impl<D: BlockDevice> Read for BlockIo<D> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlkError> {
        let n = self.room(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let ss = self.ss();
        let off = (self.pos % ss) as usize;
        // The block the position is in, as a 512-byte sector number.
        let sector = (self.pos - off as u64) / SECTOR;
        let ssz = ss as usize;
        let done = if off == 0 && n >= ssz {
            let whole = n / ssz * ssz;
            self.dev.read(sector, &mut buf[..whole])?;
            whole
        } else {
            self.dev.read(sector, &mut self.scratch)?;
            let k = n.min(ssz - off);
            buf[..k].copy_from_slice(&self.scratch[off..off + k]);
            k
        };
        self.pos += done as u64;
        Ok(done)
    }
}

impl<D: BlockDevice> Write for BlockIo<D> {
    fn write(&mut self, data: &[u8]) -> Result<usize, BlkError> {
        let n = self.room(data.len());
        if n == 0 {
            // At the end of the device (embedded-io 0.6's `write_all` panics on `Ok(0)`).
            return if data.is_empty() {
                Ok(0)
            } else {
                Err(BlkError::OutOfRange)
            };
        }
        let ss = self.ss();
        let off = (self.pos % ss) as usize;
        // The block the position is in, as a 512-byte sector number.
        let sector = (self.pos - off as u64) / SECTOR;
        let ssz = ss as usize;
        let done = if off == 0 && n >= ssz {
            let whole = n / ssz * ssz;
            self.dev.write(sector, &data[..whole])?;
            whole
        } else {
            // Read-modify-write of one sector.
            self.dev.read(sector, &mut self.scratch)?;
            let k = n.min(ssz - off);
            self.scratch[off..off + k].copy_from_slice(&data[..k]);
            self.dev.write(sector, &self.scratch)?;
            k
        };
        self.pos += done as u64;
        Ok(done)
    }

    fn flush(&mut self) -> Result<(), BlkError> {
        self.dev.flush()
    }
}

impl<D: BlockDevice> Seek for BlockIo<D> {
    fn seek(&mut self, pos: SeekFrom) -> Result<u64, BlkError> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or(BlkError::OutOfRange)?;
        Ok(self.pos)
    }
}
