//! What only a bootable image contains (feature `image`, never in tests): the boot entry and
//! Xen notes, the Rust side of the entry, `mem*`, the panic handler and the global allocator.

use core::fmt::Write as _;

use xen_platform::abi::hvm::{
    HvmMemmapTableEntry, HvmStartInfo, XEN_HVM_MEMMAP_TYPE_RAM, XEN_HVM_START_MAGIC_VALUE,
};
use xen_platform::abi::xen::StartInfo;
use xen_platform::{Console, Scheduler, ShutdownReason};

use crate::gnttab::{GRANT_FRAMES, MAP_SLOTS};
use crate::heap::Heap;
use crate::memory::{
    heap_grow, heap_release, pv_map_empty, pv_map_ram, pvh_hole, MemmapEntry, PAGES, PV_MAP_LIMIT,
};
use crate::xen::Xen;

core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));

extern "Rust" {
    /// The image's main function (`#[no_mangle] fn xen_main(xen: &'static Xen) -> !`).
    fn xen_main(xen: &'static Xen) -> !;
}

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// The heap takes its memory from the page allocator, 16 pages (or more) at a time, and gives
/// runs of 64 free pages or more back.
#[global_allocator]
static HEAP: Heap = Heap::with_release(heap_grow, heap_release);

const PAGE: u64 = 4096;
/// RAM assumed after the image if the start info has no memory map (version 0).
const FALLBACK_RAM: u64 = 4 << 20;
/// PVH: the grant table's and the mapping window's frames, in one hole above RAM (1056 pages,
/// 4.125 MiB; for a 32 MiB guest 0x2000000..0x2420000, seen in the lab).
const GRANT_PAGES: u64 = (GRANT_FRAMES + MAP_SLOTS) as u64;
/// PVH: the hole for them must end below this (0-4 GiB is identity-mapped by boot.s; leave
/// the special pages, LAPIC and IO-APIC just under 4 GiB alone).
const HOLE_LIMIT: u64 = 0xF000_0000;
const _: () = assert!(HOLE_LIMIT <= 4 << 30 && GRANT_PAGES * PAGE <= 16 << 20);
/// PV: the mapping window's own virtual range (2 MiB per L1 table) right above the RAM that
/// `pv_map_ram` maps, so RAM is mapped only up to `PV_MAP_LIMIT` minus this.
const PV_WINDOW_L1S: usize = MAP_SLOTS.div_ceil(512);
const M2: usize = 2 << 20;
/// PV: pages of the bootstrap padding (at least 512 KiB, xen.h) we take: the grant frames,
/// the window's L1 tables and `pv_map_ram`'s spare L1.
const _: () = assert!((GRANT_FRAMES + PV_WINDOW_L1S + 1) * PAGE as usize <= 512 << 10);
/// Memory-map entries looked at (libxl writes a handful).
const MAX_MEMMAP: usize = 32;

fn align_up(x: u64) -> u64 {
    (x + PAGE - 1) & !(PAGE - 1)
}

/// PVH: the RAM for the page allocator — after the image and everything libxenguest placed
/// after it (hvm_start_info, module list, command line, memory map), up to the end of that
/// RAM region — and the memory map.
fn pvh_ram(start_info: u64, map: &mut [MemmapEntry; MAX_MEMMAP]) -> (u64, u64, usize) {
    // The linker script defines __image_end; only its address is taken.
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let mut low = image_end;
    let mut ram_end = None;
    let mut n_map = 0;
    if start_info != 0 {
        // SAFETY: ebx at the PVH entry points to hvm_start_info (start_info.h), identity-mapped.
        let si = unsafe { (start_info as *const HvmStartInfo).read_volatile() };
        if si.magic == XEN_HVM_START_MAGIC_VALUE {
            low = low.max(start_info + core::mem::size_of::<HvmStartInfo>() as u64);
            low = low.max(si.modlist_paddr + 32 * si.nr_modules as u64);
            if si.cmdline_paddr != 0 {
                // Command line: NUL-terminated; assume at most a page.
                low = low.max(si.cmdline_paddr + PAGE);
            }
            if si.version >= 1 && si.memmap_paddr != 0 {
                let n = si.memmap_entries as u64;
                low = low.max(si.memmap_paddr + 24 * n);
                for i in 0..n {
                    // SAFETY: memmap_entries entries at memmap_paddr (start_info.h, version 1).
                    let e = unsafe {
                        ((si.memmap_paddr + 24 * i) as *const HvmMemmapTableEntry).read_volatile()
                    };
                    if n_map < MAX_MEMMAP {
                        map[n_map] = (e.addr, e.size, e.type_);
                        n_map += 1;
                    }
                    if e.type_ == XEN_HVM_MEMMAP_TYPE_RAM
                        && e.addr <= image_end
                        && image_end < e.addr + e.size
                    {
                        ram_end = Some(e.addr + e.size);
                    }
                }
            }
        }
    }
    let start = align_up(low);
    let end = ram_end.unwrap_or(start + FALLBACK_RAM) & !(PAGE - 1);
    (start, end.max(start), n_map)
}

/// Called by `boot.s` in 64-bit mode on the boot stack, `start_info` = hvm_start_info paddr.
#[no_mangle]
extern "C" fn xen_rt_pvh_start(start_info: u64) -> ! {
    // SAFETY: once, at boot, PVH ring 0, 0-4 GiB identity-mapped by boot.s.
    let xen = unsafe { Xen::init_pvh(start_info) }.unwrap_or_else(|e| fail(e));
    let mut map = [(0, 0, 0); MAX_MEMMAP];
    let (start, end, n_map) = pvh_ram(start_info, &mut map);
    // SAFETY: [start, end) is RAM after the image and the boot data, used by nothing else.
    unsafe { PAGES.init(start as usize, end as usize) };
    let grants = match pvh_hole(&map[..n_map], end, GRANT_PAGES, HOLE_LIMIT) {
        // SAFETY: the hole's frames are in no memory-map entry and above RAM (pvh_hole),
        // below HOLE_LIMIT, so identity-mapped by boot.s.
        Some(pfn) => unsafe { xen.init_grants_pvh(pfn) }
            .map(|n| (n, pfn << 12, (pfn << 12) + GRANT_FRAMES as u64 * PAGE)),
        None => Err(xen_platform::Error::NoSpace),
    };
    run(xen, "PVH", start, end, grants)
}

/// Called by `boot.s` from the 64-bit PV entry on the boot stack: `start_info` = rsi at entry
/// (virtual address of start_info_t), `xen_sp` = rsp at entry (end of the bootstrap stack).
#[no_mangle]
extern "C" fn xen_rt_pv_start(start_info: u64, xen_sp: u64) -> ! {
    // SAFETY: once, at boot, 64-bit PV, built from this image (notes in boot.s).
    let xen = unsafe { Xen::init_pv(start_info) }.unwrap_or_else(|e| fail(e));
    // xen.h start of day: the bootstrap region ends on a 4 MiB boundary, at least 512 KiB
    // after the bootstrap stack, and is mapped read-write: that padding holds the grant
    // table, then the page allocator; its last pages are L1 tables (the window's, the RAM's).
    const MB4: u64 = 4 << 20;
    let table = align_up(xen_sp);
    let start = table + GRANT_FRAMES as u64 * PAGE;
    let pad_end = ((xen_sp + MB4 - 1) & !(MB4 - 1)) as usize;
    // SAFETY: rsi at the PV entry points to start_info_t (xen.h); init_pv checked its magic.
    let si = unsafe { (start_info as *const StartInfo).read_volatile() };
    // The p2m list, before anything translates a page of ours to its machine frame. Here, not
    // in Xen::init_pv: the platform module then needs nothing of the memory module.
    crate::memory::set_p2m(si.mfn_list as usize, si.nr_pages as usize);
    // Where a save finds the p2m list (`xl save` of a PV guest reads it from shared_info).
    if !xen.publish_p2m() {
        let _ = writeln!(
            &*xen,
            "xen-rt: p2m list not published: this domain cannot be saved"
        );
    }
    // The rest of RAM: mapped 2 MiB at a time, L1 tables in pages of ours; below 1 GiB minus
    // the window's range.
    let mut l1s = [0usize; PV_MAP_LIMIT / M2];
    let spare = pad_end - PAGE as usize;
    let window_l1s: [usize; PV_WINDOW_L1S] =
        core::array::from_fn(|k| pad_end - (2 + k) * PAGE as usize);
    let ram_pages = (si.nr_pages as usize).min((PV_MAP_LIMIT - PV_WINDOW_L1S * M2) / PAGE as usize);
    // SAFETY: once, at boot, PV; the spare page (the padding's last) and the frames above
    // the bootstrap region are ours and unused; the p2m list is set (above).
    let (top, n_l1, err) =
        unsafe { pv_map_ram(si.pt_base as usize, pad_end, ram_pages, spare, &mut l1s) };
    // The mapping window: its own 2 MiB-aligned range right above that RAM, L1 tables
    // (nothing present) in the padding pages below the spare one.
    let window = top.max(pad_end).next_multiple_of(M2);
    // SAFETY: once, at boot, PV; the range is above all RAM mapped and below 1 GiB
    // (ram_pages); the window_l1s pages are padding nothing else uses (the page allocator
    // gets them reserved below).
    let window_ok = unsafe { pv_map_empty(si.pt_base as usize, window, &window_l1s) };
    // SAFETY: [start, top) is bootstrap padding and RAM mapped just now, used by nothing
    // else; the L1 tables in it are reserved below.
    unsafe { PAGES.init(start as usize, top) };
    for &l1 in l1s[..n_l1].iter().chain(&window_l1s) {
        PAGES.reserve(l1, 1);
    }
    if let Some(e) = err {
        let _ = writeln!(&*xen, "xen-rt: RAM above {top:#x} not mapped: {e}");
    }
    let end = top as u64;
    let grants = window_ok.and_then(|()| {
        // SAFETY: [table, start) is bootstrap padding (mapped, L1 tables present), for good;
        // the window's MAP_SLOTS pages have L1 tables now and nothing else maps them.
        unsafe { xen.init_grants_pv(table as usize, window) }.map(|n| (n, table, window as u64))
    });
    run(xen, "PV", start, end, grants)
}

fn fail(e: &str) -> ! {
    let x = Xen::get();
    x.write(b"xen-rt: ");
    x.write(e.as_bytes());
    x.write(b"\n");
    let _ = x.shutdown(ShutdownReason::Crash);
    halt()
}

fn run(
    xen: &'static Xen,
    mode: &str,
    start: u64,
    end: u64,
    grants: xen_platform::Result<(usize, u64, u64)>,
) -> ! {
    xen.set_frame_low(core::ptr::addr_of!(__image_start) as usize);
    let v = xen.version();
    let (_, pages) = PAGES.usage();
    let _ = writeln!(
        &*xen,
        "xen-rt: {mode}, Xen {}.{}, RAM {start:#x}..{end:#x} ({pages} pages for Pages + heap)",
        v >> 16,
        v & 0xffff
    );
    // Whether Xen traps rdtsc (the clock reads it): CPUID is intercepted in PVH only.
    if let Some((emulated, reliable, tsc_mode, khz)) = Some(xen.cpuid_base())
        .filter(|&b| b != 0)
        .and_then(crate::hypercall::xen_tsc_info)
    {
        let _ = writeln!(
            &*xen,
            "xen-rt: TSC emulated by Xen: {}, host TSC reliable: {}, tsc_mode {tsc_mode}, {khz} kHz",
            if emulated { "yes" } else { "no" },
            if reliable { "yes" } else { "no" },
        );
    }
    match grants {
        Ok((n, at, window)) => {
            let _ = writeln!(
                &*xen,
                "xen-rt: grant table v1: {n} frames at {at:#x}, mapping window {MAP_SLOTS} pages at {window:#x}..{:#x}",
                window + MAP_SLOTS as u64 * PAGE
            );
        }
        Err(e) => {
            let _ = writeln!(&*xen, "xen-rt: no grant table: {e}");
        }
    }
    // SAFETY: the image defines xen_main with this signature (crate docs).
    unsafe { xen_main(xen) }
}

fn halt() -> ! {
    loop {
        Xen::get().yield_now();
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let x = Xen::get();
    let _ = writeln!(&*x, "\npanic: {info}");
    let _ = x.shutdown(ShutdownReason::Crash);
    halt()
}

/// What `boot.s`'s `xen_rt_trap_common` leaves on the stack of a CPU exception (PVH): the
/// general registers it pushed, the vector and error code (0 where the CPU pushes none) from
/// the stub, then the CPU's own frame.
#[repr(C)]
struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Names of the architectural exceptions (Intel SDM vol. 3, table 6-1).
const EXCEPTIONS: [&str; 22] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD exception",
    "#VE virtualization exception",
    "#CP control protection",
];

/// A CPU exception in a PVH image (`boot.s` installs the IDT): report it on the debug port
/// (it works whatever state the console ring is in) and crash the domain, instead of the
/// triple fault Xen would report with no cause.
#[no_mangle]
extern "C" fn xen_rt_trap(f: &TrapFrame) -> ! {
    let cr2: u64;
    // SAFETY: reading cr2 has no side effect; PVH images run in ring 0.
    unsafe {
        core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
    };
    let name = EXCEPTIONS
        .get(f.vector as usize)
        .copied()
        .unwrap_or("reserved");
    let mut w = DebugPort;
    let _ = writeln!(
        w,
        "\nxen-rt: CPU exception {} ({name}), error code {:#x}, at {:#x}:{:#x}, rflags {:#x}, stack {:#x}:{:#x}, cr2 {cr2:#x}",
        f.vector, f.error, f.cs, f.rip, f.rflags, f.ss, f.rsp
    );
    let _ = writeln!(
        w,
        "xen-rt: rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}",
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp
    );
    let _ = writeln!(
        w,
        "xen-rt: r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}",
        f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15
    );
    if crate::hypercall::ready() {
        let _ = Xen::get().shutdown(ShutdownReason::Crash);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// `fmt::Write` on I/O port 0xE9 only (PVH).
struct DebugPort;

impl core::fmt::Write for DebugPort {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // SAFETY: only the PVH exception handler (ring 0) writes through DebugPort.
        unsafe { crate::hypercall::debug_port_write_ring0(s.as_bytes()) };
        Ok(())
    }
}

/// The precompiled `core` (built for unwinding) refers to it in unoptimised builds; an image
/// never unwinds (IMAGES.md).
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// As [`rust_eh_personality`]: referenced by unwinding landing pads that never run.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    halt()
}

// mem*: the linux-gnu `core`/`compiler_builtins` do not provide them (IMAGES.md). Written with
// `rep movsb`/`rep stosb` so that the compiler cannot turn them back into calls to themselves.

/// `memcpy`.
///
/// # Safety
/// C semantics: `n` bytes valid at both pointers, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: (caller) both ranges valid; rep movsb copies n bytes forward (DF clear, ABI).
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _,
                         inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dst
}

/// `memmove`.
///
/// # Safety
/// C semantics: `n` bytes valid at both pointers; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst before src, or no overlap: forward copy is safe.
        // SAFETY: forwarded from the caller.
        unsafe { memcpy(dst, src, n) };
    } else if n > 0 {
        // SAFETY: (caller) both ranges valid; copy backwards with DF set, restored after.
        unsafe {
            core::arch::asm!("std", "rep movsb", "cld",
                             inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
                             inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dst
}

/// `memset`.
///
/// # Safety
/// C semantics: `n` bytes valid at `dst`.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: (caller) the range is valid; rep stosb stores al n times forward.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _,
                         in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// `memcmp`.
///
/// # Safety
/// C semantics: `n` bytes valid at both pointers.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: (caller) i < n, inside both ranges.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// `bcmp`.
///
/// # Safety
/// As [`memcmp`].
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { memcmp(a, b, n) }
}

impl crate::Xen {
    /// The heap's free memory: `(bytes, blocks)` (memory it took from the page allocator and
    /// holds free; it never gives pages back).
    pub fn heap_free(&self) -> (usize, usize) {
        (HEAP.free_bytes(), HEAP.free_blocks())
    }
}
