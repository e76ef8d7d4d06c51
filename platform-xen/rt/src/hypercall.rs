//! Finding Xen and calling it (x86_64).
//!
//! * Detection: CPUID leaves 0x40000000..0x40010000 in steps of 0x100; the leaf whose
//!   ebx/ecx/edx read "XenVMMXenVMM" is Xen's base (arch-x86/cpuid.h: `XEN_CPUID_FIRST_LEAF`,
//!   `XEN_CPUID_SIGNATURE_*`). Leaf base+2 gives the number of hypercall pages in eax and the
//!   MSR in ebx: writing a page's guest-physical address to it makes Xen fill the page with
//!   hypercall stubs, 32 bytes per hypercall (cpuid.h, "Leaf 3").
//! * Calling: `call hypercall_page + nr * 32` with the arguments in rdi, rsi, rdx, r10, r8
//!   and the result in rax (arch-x86/xen-x86_64.h, "Hypercall interface"). Xen may clobber the
//!   argument registers (debug builds do), and the stub's `call` clobbers rcx and r11.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// First leaf of the range Xen's CPUID leaves may start in (cpuid.h).
pub const XEN_CPUID_FIRST_LEAF: u32 = 0x4000_0000;
/// End (exclusive) of the scanned range: Xen may be offset by multiples of 0x100 (e.g. when
/// it also offers Viridian leaves at 0x40000000).
pub const XEN_CPUID_LAST_LEAF: u32 = 0x4001_0000;
/// `XEN_CPUID_SIGNATURE_EBX/ECX/EDX`: "XenV" "MMXe" "nVMM".
pub const XEN_SIGNATURE: [u32; 3] = [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e];

/// Address of the filled hypercall page (0: not set up).
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// Hypercalls made, by number (the page has 128 stubs of 32 bytes; xen.h numbers are < 64).
/// Each is a guest exit, the costliest thing an image does per request under emulation.
static CALLS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

/// How many hypercalls number `nr` this domain has made since boot.
pub fn calls(nr: u32) -> u64 {
    CALLS
        .get(nr as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// How the guest was booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Not set up (host builds, tests).
    None = 0,
    /// PVH: ring 0, paging of our own, HVM params.
    Pvh = 1,
    /// 64-bit PV: ring 3, Xen's page tables, start_info.
    Pv = 2,
}

static MODE: AtomicU8 = AtomicU8::new(Mode::None as u8);

/// The boot mode.
pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::Pvh,
        2 => Mode::Pv,
        _ => Mode::None,
    }
}

/// The hypercall page: one page Xen fills with stubs. Lives in .bss; the image maps it
/// executable (the PVH boot page tables set no NX bit; PV: Xen maps the image RWX). Its symbol
/// is named for `boot.s`: the PV entry calls `fpu_taskswitch` through it and the
/// `XEN_ELFNOTE_HYPERCALL_PAGE` note points at it (elfnote.h: Xen fills it at build time).
#[repr(C, align(4096))]
pub struct HypercallPage(core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: written only by Xen (once: MSR write or domain build) and then only executed.
unsafe impl Sync for HypercallPage {}
/// The page.
#[export_name = "xen_rt_hypercall_page"]
pub static HYPERCALL_PAGE: HypercallPage = HypercallPage(core::cell::UnsafeCell::new([0; 4096]));

fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid(leaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The CPUID base leaf of Xen, if we run on Xen.
pub fn xen_cpuid_base() -> Option<u32> {
    (XEN_CPUID_FIRST_LEAF..XEN_CPUID_LAST_LEAF)
        .step_by(0x100)
        .find(|&leaf| {
            let [eax, ebx, ecx, edx] = cpuid(leaf);
            [ebx, ecx, edx] == XEN_SIGNATURE && eax.wrapping_sub(leaf) >= 2
        })
}

/// Xen's TSC leaf (cpuid.h, "Leaf 4", base+3 sub-leaf 0): whether the TSC is emulated (every
/// `rdtsc` traps to Xen), whether the host TSC is reliable, `tsc_mode`, the guest TSC in kHz.
/// `None` if Xen does not offer the leaf.
pub fn xen_tsc_info(base: u32) -> Option<(bool, bool, u32, u32)> {
    if cpuid(base)[0] < base + 3 {
        return None;
    }
    let r = core::arch::x86_64::__cpuid_count(base + 3, 0);
    Some((r.eax & 1 != 0, r.eax & 2 != 0, r.ebx, r.ecx))
}

/// Xen's version (major << 16 | minor), from leaf base+1.
pub fn xen_version(base: u32) -> u32 {
    cpuid(base + 1)[0]
}

/// Find Xen and have it fill the hypercall page. The image is identity-mapped, so the page's
/// address is its guest-physical address. Returns Xen's CPUID base.
///
/// # Safety
/// Only in a guest on Xen running in ring 0 (PVH) with identity mapping; executes `wrmsr`.
pub unsafe fn init_pvh() -> Option<u32> {
    let base = xen_cpuid_base()?;
    let [_pages, msr, _, _] = cpuid(base + 2);
    let addr = HYPERCALL_PAGE.0.get() as usize as u64;
    // SAFETY: (caller) ring 0 on Xen; the MSR from leaf base+2 takes the guest-physical address
    // of a page for Xen to fill (cpuid.h). The page is ours and only Xen writes it.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") addr as u32, in("edx") (addr >> 32) as u32,
             options(nostack, preserves_flags));
    }
    PAGE.store(addr as usize, Ordering::Release);
    MODE.store(Mode::Pvh as u8, Ordering::Relaxed);
    Some(base)
}

/// PV: Xen filled the hypercall page while building the domain (`XEN_ELFNOTE_HYPERCALL_PAGE`).
/// Returns Xen's CPUID base (CPUID is allowed in ring 3; PV guests see Xen's leaves).
///
/// # Safety
/// Only in a 64-bit PV guest whose image carries the hypercall-page note.
pub unsafe fn init_pv() -> Option<u32> {
    PAGE.store(HYPERCALL_PAGE.0.get() as usize, Ordering::Release);
    MODE.store(Mode::Pv as u8, Ordering::Relaxed);
    xen_cpuid_base()
}

/// Whether [`init`] filled the hypercall page.
pub fn ready() -> bool {
    PAGE.load(Ordering::Acquire) != 0
}

/// Issue hypercall `nr` with up to five arguments. Returns rax (a negative errno on error).
///
/// # Safety
/// The arguments must be what the hypercall expects; pointers must point to valid memory of
/// the right layout for as long as the hypercall runs. Returns `-ENOSYS` (-38) without calling
/// if the hypercall page is not set up.
pub unsafe fn hypercall5(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let page = PAGE.load(Ordering::Acquire);
    if page == 0 {
        return -38;
    }
    if let Some(c) = CALLS.get(nr as usize) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    let entry = page + (nr as usize) * 32;
    let ret: i64;
    // SAFETY: (caller) valid arguments; `entry` is Xen's stub for `nr` in the page it filled.
    // Not `nostack`: the call pushes a return address (the compiler keeps the red zone free).
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) entry,
            inlateout("rax") nr as u64 => ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// Two-argument hypercall (most `*_op(cmd, arg)` calls).
///
/// # Safety
/// As [`hypercall5`].
pub unsafe fn hypercall2(nr: u32, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded from the caller.
    unsafe { hypercall5(nr, a1, a2, 0, 0, 0) }
}

/// Write bytes to I/O port 0xE9: Xen prints what an HVM/PVH guest writes there in its own
/// log ("(d1) ..."), before any console exists.
pub fn debug_port_write(bytes: &[u8]) {
    if !cfg!(feature = "image") || mode() != Mode::Pvh {
        return; // only PVH runs in ring 0 (on the host or in PV `out` would fault)
    }
    // SAFETY: a PVH image, in ring 0 (checked just above).
    unsafe { debug_port_write_ring0(bytes) }
}

/// [`debug_port_write`] without the mode check, for the PVH exception handler (which may run
/// before the mode is recorded).
///
/// # Safety
/// Only in ring 0 (PVH images): elsewhere `out` faults.
pub unsafe fn debug_port_write_ring0(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: port 0xE9 is Xen's debug port for HVM/PVH guests; an `out` there has no
        // effect on memory; (caller) ring 0.
        unsafe {
            asm!("out dx, al", in("dx") 0xe9u16, in("al") b, options(nomem, nostack, preserves_flags));
        }
    }
}
