//! Helpers shared by the simulator tests.
#![allow(dead_code)]

use std::ptr::NonNull;

use xen_platform::PAGE_SIZE;

/// Read byte `i` of the page at `p`.
pub fn peek(p: NonNull<u8>, i: usize) -> u8 {
    assert!(i < PAGE_SIZE);
    // SAFETY: tests only pass addresses of live pages/mappings from the simulator; i < 4096.
    unsafe { p.as_ptr().add(i).read_volatile() }
}

/// Write byte `i` of the (writable) page at `p`.
pub fn poke(p: NonNull<u8>, i: usize, v: u8) {
    assert!(i < PAGE_SIZE);
    // SAFETY: tests only pass addresses of live writable pages/mappings; i < 4096.
    unsafe { p.as_ptr().add(i).write_volatile(v) }
}

/// The permission string ("rw-s", "r--s", ...) of the mapping containing `addr`, from
/// /proc/self/maps.
pub fn perms(addr: NonNull<u8>) -> Option<String> {
    let a = addr.as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let range = it.next()?;
        let perms = it.next()?;
        let (lo, hi) = range.split_once('-')?;
        let lo = usize::from_str_radix(lo, 16).ok()?;
        let hi = usize::from_str_radix(hi, 16).ok()?;
        if lo <= a && a < hi {
            return Some(perms.to_owned());
        }
    }
    None
}
