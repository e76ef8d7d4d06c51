//! What a storage domain serves for a vbd: the `target=` of the guest's disk line, which libxl
//! writes to the backend's `params` node.
//!
//! Syntax (one of):
//! - `ram:<MiB>` — a RAM disk of that many MiB (zeroed; gone when the storage domain stops).
//! - `disk:<vdev>` — the whole of a disk this storage domain itself received through its own
//!   blkfront (`<vdev>` as in its own config: `xvda`, `xvdb`, ... or a numeric device id), so
//!   the storage domain re-exports it (front in, back out).
//! - `disk:<vdev>:<start-MiB>:<len-MiB>` — a window of such a disk: `len` MiB from `start`.
//!
//! Anything else fails that one device (`error/` published, Closed); the others go on.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};

use xen_blk::back::DiskSpec;
use xen_blk::front::{Blkfront, DeviceState};
use xen_blk::reexport::FrontStorage;
use xen_blk::storage::{MemDisk, ReadOnly, Slice, Storage};
use xen_bus::DriverError;
use xen_platform::PlatformRef;

const EINVAL: i32 = 22;
const ENODEV: i32 = 19;
const ENOMEM: i32 = 12;
const EIO: i32 = 5;

/// The largest RAM disk accepted (MiB): a guard against a typo eating the domain's memory.
pub const MAX_RAM_MIB: u64 = 4096;

/// A parsed `target=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `ram:<MiB>`.
    Ram {
        /// Size in MiB.
        mib: u64,
    },
    /// `disk:<vdev>[:<start-MiB>:<len-MiB>]`.
    Disk {
        /// The device id of the storage domain's own vbd (`xvda` = 51712).
        devid: u32,
        /// `(start, len)` in MiB; `None`: the whole disk.
        window: Option<(u64, u64)>,
    },
}

/// The device id of a Linux-style virtual device name: `xvd<letters>` (`xvda` = 202 << 8,
/// each next disk + 16; from `xvdq` on the extended form `1 << 28 | index << 8`, as Linux's
/// xen-blkfront and libxl's `libxl__device_disk_dev_number` encode it), or a number.
pub fn vdev_to_devid(vdev: &str) -> Option<u32> {
    if let Ok(n) = vdev.parse::<u32>() {
        return Some(n);
    }
    let letters = vdev.strip_prefix("xvd")?;
    if letters.is_empty() || !letters.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    // bijective base 26: a = 0, z = 25, aa = 26, ...
    let mut index: u32 = 0;
    for b in letters.bytes() {
        index = index
            .checked_mul(26)?
            .checked_add(u32::from(b - b'a') + 1)?;
    }
    let index = index - 1;
    if index < 16 {
        Some((202 << 8) | (index << 4))
    } else if index < (1 << 20) {
        Some((1 << 28) | (index << 8))
    } else {
        None
    }
}

/// Parse a `target=`.
pub fn parse_target(params: &str) -> Result<Target, String> {
    let num = |s: &str, what: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("target {params:?}: {what} {s:?} is not a number"))
    };
    if let Some(mib) = params.strip_prefix("ram:") {
        let mib = num(mib, "size")?;
        if mib == 0 || mib > MAX_RAM_MIB {
            return Err(format!(
                "target {params:?}: a RAM disk of 1 to {MAX_RAM_MIB} MiB"
            ));
        }
        return Ok(Target::Ram { mib });
    }
    if let Some(rest) = params.strip_prefix("disk:") {
        let mut parts = rest.split(':');
        let vdev = parts.next().unwrap_or("");
        let devid = vdev_to_devid(vdev)
            .ok_or_else(|| format!("target {params:?}: {vdev:?} is not a virtual device name"))?;
        let window = match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => None,
            (Some(s), Some(l), None) => {
                let (s, l) = (num(s, "start")?, num(l, "length")?);
                if l == 0 {
                    return Err(format!("target {params:?}: an empty window"));
                }
                Some((s, l))
            }
            _ => {
                return Err(format!(
                    "target {params:?}: disk:<vdev> or disk:<vdev>:<start-MiB>:<len-MiB>"
                ))
            }
        };
        return Ok(Target::Disk { devid, window });
    }
    Err(format!(
        "target {params:?}: not ram:<MiB>, disk:<vdev> or disk:<vdev>:<start-MiB>:<len-MiB>"
    ))
}

/// Make the storage `spec` names. `front` is the storage domain's own blkfront (the disks it
/// received); `None` refuses `disk:` targets.
pub fn make_storage<H: PlatformRef>(
    spec: &DiskSpec,
    front: Option<&Blkfront<H>>,
) -> Result<Box<dyn Storage>, DriverError> {
    let target = parse_target(&spec.params).map_err(|e| DriverError::new(EINVAL, e))?;
    let storage: Box<dyn Storage> = match target {
        Target::Ram { mib } => {
            // MemDisk::new allocates `mib` MiB: refuse rather than abort when the heap has
            // less (alloc failure in an image is fatal), by asking the allocator first.
            let bytes = usize::try_from(mib << 20).map_err(|_| {
                DriverError::new(ENOMEM, format!("ram:{mib}: too large for this domain"))
            })?;
            let mut probe = alloc::vec::Vec::<u8>::new();
            probe.try_reserve_exact(bytes + 4096).map_err(|_| {
                DriverError::new(
                    ENOMEM,
                    format!("ram:{mib}: not enough memory in the storage domain"),
                )
            })?;
            drop(probe);
            Box::new(MemDisk::new(mib << 11))
        }
        Target::Disk { devid, window } => {
            let front = front.ok_or_else(|| {
                DriverError::new(ENODEV, "disk: targets need the storage domain's blkfront")
            })?;
            let node = format!("device/vbd/{devid}");
            let dev = front.device(&node).ok_or_else(|| {
                DriverError::new(
                    ENODEV,
                    format!("{}: this storage domain has no disk {node}", spec.params),
                )
            })?;
            if dev.state() != DeviceState::Connected {
                return Err(DriverError::new(
                    EIO,
                    format!(
                        "{}: {node} is not connected ({:?})",
                        spec.params,
                        dev.state()
                    ),
                ));
            }
            let inner = FrontStorage::new(dev);
            match window {
                None => Box::new(inner),
                Some((start, len)) => {
                    let slice = Slice::new(inner, start << 11, len << 11).ok_or_else(|| {
                        DriverError::new(
                            EINVAL,
                            format!("{}: the window does not fit the disk", spec.params),
                        )
                    })?;
                    Box::new(slice)
                }
            }
        }
    };
    Ok(if spec.read_only {
        Box::new(ReadOnly::new(storage))
    } else {
        storage
    })
}

/// Short description for logs.
pub fn describe(t: &Target) -> String {
    match t {
        Target::Ram { mib } => format!("RAM disk of {mib} MiB"),
        Target::Disk {
            devid,
            window: None,
        } => format!("own disk {devid}"),
        Target::Disk {
            devid,
            window: Some((s, l)),
        } => format!("own disk {devid}, {l} MiB from {s} MiB"),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdev_names() {
        assert_eq!(vdev_to_devid("xvda"), Some(51712));
        assert_eq!(vdev_to_devid("xvdb"), Some(51728));
        assert_eq!(vdev_to_devid("xvdp"), Some(51952));
        assert_eq!(vdev_to_devid("xvdq"), Some((1 << 28) | (16 << 8)));
        assert_eq!(vdev_to_devid("xvdaa"), Some((1 << 28) | (26 << 8)));
        assert_eq!(vdev_to_devid("51712"), Some(51712));
        for bad in ["", "xvd", "sda", "xvdA", "xvd1", "hda"] {
            assert_eq!(vdev_to_devid(bad), None, "{bad}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("ram:64"), Ok(Target::Ram { mib: 64 }));
        assert_eq!(
            parse_target("disk:xvda"),
            Ok(Target::Disk {
                devid: 51712,
                window: None
            })
        );
        assert_eq!(
            parse_target("disk:xvdb:16:32"),
            Ok(Target::Disk {
                devid: 51728,
                window: Some((16, 32))
            })
        );
        for bad in [
            "ram:0",
            "ram:x",
            "ram:99999",
            "/dev/sda",
            "disk:",
            "disk:sda",
            "disk:xvda:1",
            "disk:xvda:1:0",
            "disk:xvda:1:2:3",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
