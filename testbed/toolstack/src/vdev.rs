//! Virtual-device numbers: the `virtual-device` key and the devid of a vbd.
//!
//! Xen's `docs/misc/vbd-interface.txt` ("Concrete encoding in the VBD interface") encodes a
//! disk number and a partition number as one integer:
//!
//! ```text
//!     1 << 28 | disk << 8 | partition      xvd, disks or partitions 16 onwards
//!    202 << 8 | disk << 4 | partition      xvd, disks and partitions up to 15
//!      8 << 8 | disk << 4 | partition      sd, disks and partitions up to 15
//!      3 << 8 | disk << 6 | partition      hd, disks 0..1, partitions 0..63
//!     22 << 8 | (disk-2) << 6 | partition  hd, disks 2..3, partitions 0..63
//! ```
//!
//! The 1<<28 format is used only where 202<<8 has too few bits; it handles disks up to
//! (1<<20)-1 and partitions up to 255. Names: `xvda` is disk 0, `xvdz` 25, `xvdaa` 26
//! (bijective base 26: `xvdtq` is 536), an optional decimal partition follows (`xvda2`);
//! `d<disk>[p<part>]` is the same for xvd (`d536p37` = `xvdtq37`). A plain number (decimal,
//! `0x` hex or leading-`0` octal) is taken as the encoded value itself, as libxl does for
//! guests that predate the scheme. So `xvda` = (202<<8)|(0<<4) = 51712 and `xvdb` = 51728.

/// The encoded virtual-device number of `vdev` (`xvda`, `xvdb3`, `d1p2`, `sdb3`, `hdc2`,
/// `51712`, `0xca00`), or `None` if it is not a valid name or its numbers do not fit.
pub fn vdev_to_devid(vdev: &str) -> Option<u32> {
    if let Some(rest) = vdev.strip_prefix("xvd") {
        let (disk, part) = letters_then_part(rest)?;
        return xvd(disk, part);
    }
    if let Some(rest) = vdev.strip_prefix("sd") {
        let (disk, part) = letters_then_part(rest)?;
        return (disk <= 15 && part <= 15).then_some((8 << 8) | (disk << 4) | part);
    }
    if let Some(rest) = vdev.strip_prefix("hd") {
        let (disk, part) = letters_then_part(rest)?;
        if part > 63 {
            return None;
        }
        return match disk {
            0..=1 => Some((3 << 8) | (disk << 6) | part),
            2..=3 => Some((22 << 8) | ((disk - 2) << 6) | part),
            _ => None,
        };
    }
    if let Some(rest) = vdev.strip_prefix('d') {
        let (disk, part) = match rest.split_once('p') {
            Some((d, p)) => (decimal(d)?, decimal(p)?),
            None => (decimal(rest)?, 0),
        };
        return xvd(disk, part);
    }
    number(vdev)
}

/// The xvd encoding of disk `disk`, partition `part`.
pub fn xvd(disk: u32, part: u32) -> Option<u32> {
    if disk <= 15 && part <= 15 {
        Some((202 << 8) | (disk << 4) | part)
    } else if disk < (1 << 20) && part <= 255 {
        Some((1 << 28) | (disk << 8) | part)
    } else {
        None
    }
}

/// `a`..`z`, `aa`.. (bijective base 26, from 0) then an optional decimal partition.
fn letters_then_part(s: &str) -> Option<(u32, u32)> {
    let split = s.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(s.len());
    let (letters, digits) = s.split_at(split);
    if letters.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for b in letters.bytes() {
        n = n.checked_mul(26)?.checked_add(u32::from(b - b'a') + 1)?;
    }
    let disk = n - 1;
    let part = if digits.is_empty() {
        0
    } else {
        decimal(digits)?
    };
    Some((disk, part))
}

fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A plain number as libxl reads it (`strtoul(s, NULL, 0)`, strictly: the whole string).
fn number(s: &str) -> Option<u32> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u32::from_str_radix(h, 16).ok();
    }
    if s.len() > 1 && s.starts_with('0') {
        return u32::from_str_radix(&s[1..], 8).ok();
    }
    decimal(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_examples() {
        assert_eq!(vdev_to_devid("xvda"), Some(51712));
        assert_eq!(vdev_to_devid("xvdb"), Some(51728));
        assert_eq!(vdev_to_devid("d0"), Some(51712));
        assert_eq!(vdev_to_devid("d0p0"), Some(51712));
        assert_eq!(vdev_to_devid("xvda2"), vdev_to_devid("d0p2"));
        assert_eq!(vdev_to_devid("d1p2"), Some((202 << 8) | (1 << 4) | 2));
        assert_eq!(vdev_to_devid("xvdtq37"), Some((1 << 28) | (536 << 8) | 37));
        assert_eq!(vdev_to_devid("d536p37"), vdev_to_devid("xvdtq37"));
        assert_eq!(vdev_to_devid("xvdq"), Some((1 << 28) | (16 << 8)));
        assert_eq!(vdev_to_devid("xvdp"), Some((202 << 8) | (15 << 4)));
        assert_eq!(vdev_to_devid("xvdaa"), Some((1 << 28) | (26 << 8)));
        assert_eq!(vdev_to_devid("sdb3"), Some((8 << 8) | (1 << 4) | 3));
        assert_eq!(vdev_to_devid("hdc2"), Some((22 << 8) | 2));
        assert_eq!(vdev_to_devid("hda"), Some(3 << 8));
        assert_eq!(vdev_to_devid("hdb63"), Some((3 << 8) | (1 << 6) | 63));
        assert_eq!(vdev_to_devid("51712"), Some(51712));
        assert_eq!(vdev_to_devid("0xca00"), Some(51712));
        assert_eq!(vdev_to_devid("0145000"), Some(51712));
    }

    #[test]
    fn rejects() {
        for bad in [
            "", "xvd", "xvdA", "xvda-1", "sdq", "sda16", "hde", "hda64", "d", "dp1", "d1p",
            "xvda256", "x", "12ab",
        ] {
            assert_eq!(vdev_to_devid(bad), None, "{bad:?}");
        }
    }
}
