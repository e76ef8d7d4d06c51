//! The real platform on x86_64 Xen (PVH): [`Xen`].
//!
//! * Event channels: 2-level ABI over `shared_info` (xen.h: `evtchn_pending`/`evtchn_mask`,
//!   one bit per port), which a PVH guest maps with `XENMEM_add_to_physmap`
//!   (memory.h: `XENMAPSPACE_shared_info`, idx 0). `notify`/`alloc_unbound`/
//!   `bind_interdomain`/`close`/`unmask` are `EVTCHNOP_*` (event_channel.h). Upcalls stay masked
//!   (`vcpu_info.evtchn_upcall_mask` = 1, interrupts off): [`Events::wait`] is `SCHEDOP_poll`
//!   with a timeout (sched.h), after which the pending bits are scanned.
//! * Clock: Xen system time from `vcpu_info[0].time` (xen.h `vcpu_time_info`: `system_time +
//!   ((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul >> 32`, under the `version`
//!   seqlock) — the same nanoseconds `SCHEDOP_poll`'s absolute timeout uses. Before
//!   `shared_info` is mapped (or if Xen never fills it) a TSC count at an assumed 1 GHz is used.
//! * Console: the PV console ring page (io/console.h `xencons_interface`, `out`/`out_cons`/
//!   `out_prod`) from `HVM_PARAM_CONSOLE_PFN`/`_EVTCHN`, mirrored to I/O port 0xE9.
//!   At most [`MAX_POLL_PORTS`] (128) ports go into one poll; with more, the wait wakes every
//!   millisecond to scan the others.
//! * Grants, grant mapping and pages: [`crate::gnttab`], [`crate::memory`].
//! * Scheduler: `SCHEDOP_yield`, `SCHEDOP_poll` with no ports as a timed sleep, and
//!   `SCHEDOP_shutdown` with the reason passed by pointer (sched.h).

use core::ptr::NonNull;
use core::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use core::time::Duration;

use xen_platform::abi::console::{XenconsInterface, XENCONS_OUT_SIZE};
use xen_platform::abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnClose, EvtchnSend, EvtchnUnmask,
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_CLOSE, EVTCHNOP_SEND,
    EVTCHNOP_UNMASK, EVTCHN_2L_NR_CHANNELS,
};
use xen_platform::abi::hvm::{
    HvmStartInfo, XenHvmParam, HVMOP_GET_PARAM, HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN,
    HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
};
use xen_platform::abi::memory::{XenAddToPhysmap, XENMAPSPACE_SHARED_INFO, XENMEM_ADD_TO_PHYSMAP};
use xen_platform::abi::sched::{
    SchedPoll, SchedShutdown, SCHEDOP_POLL, SCHEDOP_SHUTDOWN, SCHEDOP_YIELD,
};
use xen_platform::abi::xen::{
    GuestHandle, SharedInfo, StartInfo, VcpuInfo, VcpuTimeInfo, HYPERVISOR_EVENT_CHANNEL_OP,
    HYPERVISOR_HVM_OP, HYPERVISOR_MEMORY_OP, HYPERVISOR_SCHED_OP, HYPERVISOR_UPDATE_VA_MAPPING,
    HYPERVISOR_XEN_VERSION, MAX_GUEST_CMDLINE,
};
use xen_platform::abi::xen::{EVTCHN_WORDS, MACH2PHYS_VIRT_START, UVMF_INVLPG};
use xen_platform::abi::{DomId, EvtchnPort, DOMID_SELF, PAGE_SHIFT};
use xen_platform::xs_ring::XsGuestRing;
use xen_platform::{Clock, Console, Error, Events, Result, Scheduler, ShutdownReason};

use crate::hypercall::{self, hypercall2};

/// Most ports one `SCHEDOP_poll` takes (Xen's `do_poll` returns -EINVAL above 128).
pub const MAX_POLL_PORTS: usize = 128;

/// The page `shared_info` is mapped at (its RAM is given back to Xen by the remap).
#[repr(C, align(4096))]
struct SharedInfoPage(core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: after the remap Xen writes this page; we access it only with atomics/volatile.
unsafe impl Sync for SharedInfoPage {}
static SHARED_INFO_PAGE: SharedInfoPage = SharedInfoPage(core::cell::UnsafeCell::new([0; 4096]));

/// The guest's command line (`extra=` of the xl config), copied at boot: in PVH the page
/// holding it lies in RAM the page allocator hands out later.
struct CmdlineBuf(core::cell::UnsafeCell<[u8; MAX_GUEST_CMDLINE]>);
// SAFETY: written only by `Xen::save_cmdline` during init (one vCPU, before anything reads
// it) and read-only afterwards.
unsafe impl Sync for CmdlineBuf {}
static CMDLINE: CmdlineBuf = CmdlineBuf(core::cell::UnsafeCell::new([0; MAX_GUEST_CMDLINE]));

const PENDING: usize = core::mem::offset_of!(SharedInfo, evtchn_pending);
const MASK: usize = core::mem::offset_of!(SharedInfo, evtchn_mask);
const TIME: usize = core::mem::offset_of!(VcpuInfo, time);
const UPCALL_MASK: usize = core::mem::offset_of!(VcpuInfo, evtchn_upcall_mask);

/// The real platform. One static instance ([`Xen::get`]), set up once at boot by
/// [`Xen::init`]; every field is written there and read afterwards.
#[derive(Debug)]
pub struct Xen {
    cpuid_base: AtomicU32,
    shared_info: AtomicUsize,
    console_ring: AtomicUsize,
    console_port: AtomicU32,
    store_pfn: AtomicU64,
    store_port: AtomicU32,
    start_info: AtomicU64,
    cmdline_len: AtomicUsize,
    store_taken: AtomicBool,
    pv: AtomicBool,
    resumes: AtomicU32,
}

static XEN: Xen = Xen {
    cpuid_base: AtomicU32::new(0),
    shared_info: AtomicUsize::new(0),
    console_ring: AtomicUsize::new(0),
    console_port: AtomicU32::new(0),
    store_pfn: AtomicU64::new(0),
    store_port: AtomicU32::new(0),
    start_info: AtomicU64::new(0),
    cmdline_len: AtomicUsize::new(0),
    store_taken: AtomicBool::new(false),
    pv: AtomicBool::new(false),
    resumes: AtomicU32::new(0),
};

/// PV: the pages a save reads our p2m list through (`shared_info.arch`'s
/// `pfn_to_mfn_frame_list_list`, arch-x86/xen.h): page 0 lists the frames of the frame lists
/// (one here), page 1 the frames of the p2m list. One frame list covers 512 p2m pages, so
/// 262144 pages (1 GiB) of guest; a larger guest is not published (and cannot be saved).
#[repr(C, align(4096))]
struct P2mFrameLists(core::cell::UnsafeCell<[[u64; 512]; 2]>);
// SAFETY: written only by `Xen::publish_p2m` (boot, and resume while nothing else runs) and
// read by the toolstack of a save (a foreign mapping), never by us.
unsafe impl Sync for P2mFrameLists {}
static P2M_FRAME_LISTS: P2mFrameLists = P2mFrameLists(core::cell::UnsafeCell::new([[0; 512]; 2]));

fn rc(ret: i64) -> Result<()> {
    if ret < 0 {
        Err(Error::from_xen_errno(ret as i32))
    } else {
        Ok(())
    }
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Xen {
    /// The platform object (uninitialised until [`Xen::init`]: every operation then fails
    /// with `Unsupported` or does nothing).
    pub fn get() -> &'static Xen {
        &XEN
    }

    /// PVH: set everything up: hypercall page, `shared_info` (upcalls masked), console and
    /// xenstore parameters. `start_info` is the physical address of `hvm_start_info`.
    ///
    /// # Safety
    /// Only once, at boot, in a PVH guest in ring 0 with 0–4 GiB identity-mapped.
    pub unsafe fn init_pvh(start_info: u64) -> core::result::Result<&'static Xen, &'static str> {
        let x = &XEN;
        x.start_info.store(start_info, Ordering::Relaxed);
        // SAFETY: (caller) ebx at the PVH entry is the physical address of hvm_start_info
        // (arch-x86/hvm/start_info.h), identity-mapped; so is the command line it points to,
        // a NUL-terminated string.
        unsafe {
            let si = (start_info as *const HvmStartInfo).read_volatile();
            if si.cmdline_paddr != 0 {
                x.save_cmdline(si.cmdline_paddr as *const u8);
            }
        }
        // SAFETY: (caller) PVH, ring 0.
        let base =
            unsafe { hypercall::init_pvh() }.ok_or("not running on Xen (no CPUID leaves)")?;
        x.cpuid_base.store(base, Ordering::Relaxed);

        let mapped = x.map_shared_info_pvh();
        x.read_params_pvh()?;
        if !mapped {
            return Err("XENMEM_add_to_physmap(shared_info) failed");
        }
        Ok(x)
    }

    /// PVH: put `shared_info` at our static page (`XENMAPSPACE_shared_info`); upcalls
    /// masked, the clock filled in. False if Xen refused.
    fn map_shared_info_pvh(&self) -> bool {
        let page = SHARED_INFO_PAGE.0.get() as usize;
        let mut xatp = XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_SHARED_INFO,
            idx: 0,
            gpfn: (page >> PAGE_SHIFT) as u64,
        };
        // SAFETY: XENMEM_add_to_physmap takes a pointer to xen_add_to_physmap (memory.h);
        // the page is ours, identity-mapped, and never used for anything else.
        let r = unsafe {
            hypercall2(
                HYPERVISOR_MEMORY_OP,
                XENMEM_ADD_TO_PHYSMAP,
                &mut xatp as *mut _ as u64,
            )
        };
        if r != 0 {
            return false;
        }
        self.shared_info_mapped(page);
        true
    }

    /// `shared_info` is at `page`: publish it, keep upcalls masked on vCPU 0 for good (red
    /// zone: IMAGES.md), and let a context switch make Xen fill `vcpu_info[0].time`.
    fn shared_info_mapped(&self, page: usize) {
        self.shared_info.store(page, Ordering::Release);
        self.upcall_mask_byte().store(1, Ordering::SeqCst);
        self.yield_now();
    }

    /// PVH: the console and XenStore pages and ports from the HVM parameters.
    fn read_params_pvh(&self) -> core::result::Result<(), &'static str> {
        let cons_pfn = self.hvm_param(HVM_PARAM_CONSOLE_PFN).unwrap_or(0);
        let cons_port = self.hvm_param(HVM_PARAM_CONSOLE_EVTCHN).unwrap_or(0);
        if cons_pfn != 0 {
            self.console_port.store(cons_port as u32, Ordering::Relaxed);
            self.console_ring
                .store((cons_pfn << PAGE_SHIFT) as usize, Ordering::Release);
        }
        let store_pfn = self
            .hvm_param(HVM_PARAM_STORE_PFN)
            .map_err(|_| "no STORE_PFN")?;
        let store_port = self
            .hvm_param(HVM_PARAM_STORE_EVTCHN)
            .map_err(|_| "no STORE_EVTCHN")?;
        self.store_pfn.store(store_pfn, Ordering::Relaxed);
        self.store_port.store(store_port as u32, Ordering::Relaxed);
        Ok(())
    }

    /// 64-bit PV: `start_info` is the virtual address of `start_info_t` (xen.h, rsi at
    /// entry). The image is linked with `VIRT_BASE` 0, so the bootstrap region maps
    /// pseudo-physical frame `pfn` at virtual `pfn << 12` (xen.h "Start-of-day memory
    /// layout", items 3–6), including the xenstore and console pages; their MFNs become
    /// PFNs through the read-only machine-to-phys table at `MACH2PHYS_VIRT_START`
    /// (arch-x86/xen-x86_64.h). `shared_info` (a machine address in start_info) is mapped
    /// over our own page with `update_va_mapping`.
    ///
    /// # Safety
    /// Only once, at boot, in a 64-bit PV guest built from this image.
    pub unsafe fn init_pv(start_info: u64) -> core::result::Result<&'static Xen, &'static str> {
        let x = &XEN;
        x.start_info.store(start_info, Ordering::Relaxed);
        // SAFETY: (caller) PV; Xen filled the hypercall page (HYPERCALL_PAGE note).
        let base = unsafe { hypercall::init_pv() }.unwrap_or(0);
        x.cpuid_base.store(base, Ordering::Relaxed);
        // SAFETY: rsi at the PV entry points to start_info_t, mapped read-write (xen.h).
        let si = unsafe { (start_info as *const StartInfo).read_volatile() };
        if !si.magic.starts_with(b"xen-3.0-x86_64") {
            return Err("bad start_info magic");
        }
        // SAFETY: start_info.cmd_line lies in the start_info page (mapped, read above); the
        // copy stops at its end at the latest.
        unsafe {
            x.save_cmdline(
                core::ptr::addr_of!((*(start_info as *const StartInfo)).cmd_line).cast(),
            );
        }
        x.pv.store(true, Ordering::Relaxed);
        let mapped = x.map_shared_info_pv(si.shared_info);
        x.read_params_pv(&si);
        if !mapped {
            return Err("update_va_mapping(shared_info) failed");
        }
        Ok(x)
    }

    /// PV: map `shared_info` (machine address `ma`, from start_info) over our static page
    /// with `update_va_mapping`. False if Xen refused.
    fn map_shared_info_pv(&self, ma: u64) -> bool {
        let page = SHARED_INFO_PAGE.0.get() as usize;
        // PTE: machine address | present | writable | accessed | dirty.
        let pte = (ma & !0xfff) | 0x63;
        // SAFETY: update_va_mapping(va, pte, flags) (xen.h, x86_64 argument order); `page`
        // is our own page, used for nothing else, and becomes shared_info.
        let r = unsafe {
            hypercall::hypercall5(
                HYPERVISOR_UPDATE_VA_MAPPING,
                page as u64,
                pte,
                UVMF_INVLPG,
                0,
                0,
            )
        };
        if r != 0 {
            return false;
        }
        self.shared_info_mapped(page);
        true
    }

    /// PV: the console and XenStore pages (machine frames made pseudo-physical through the
    /// read-only M2P table at `MACH2PHYS_VIRT_START`, arch-x86/xen-x86_64.h) and ports.
    fn read_params_pv(&self, si: &StartInfo) {
        let m2p = |mfn: u64| -> u64 {
            // SAFETY: the M2P table is mapped read-only for every PV guest at
            // MACH2PHYS_VIRT_START (xen-x86_64.h); `mfn` is a frame Xen gave us.
            unsafe { ((MACH2PHYS_VIRT_START as *const u64).add(mfn as usize)).read_volatile() }
        };
        // SAFETY: start_info is a repr(C) union read of plain integers (domU layout).
        let (cons_mfn, cons_port) = unsafe { (si.console.dom_u.mfn, si.console.dom_u.evtchn) };
        if cons_mfn != 0 {
            self.console_port.store(cons_port, Ordering::Relaxed);
            self.console_ring
                .store((m2p(cons_mfn) << PAGE_SHIFT) as usize, Ordering::Release);
        }
        self.store_pfn.store(m2p(si.store_mfn), Ordering::Relaxed);
        self.store_port.store(si.store_evtchn, Ordering::Relaxed);
    }

    /// PV: tell a future save where our p2m list is (`shared_info.arch.max_pfn` and
    /// `pfn_to_mfn_frame_list_list`, arch-x86/xen.h; libxc's save maps the list through
    /// them, Linux's `xen_build_mfn_list_list` publishes the same). Called at boot and after
    /// every resume: a restore moves the p2m list's own pages to new machine frames. False
    /// when the guest is too large for [`P2mFrameLists`] or a frame is unknown.
    pub(crate) fn publish_p2m(&self) -> bool {
        let (list, nr) = crate::memory::p2m_list();
        let Some(base) = self.shared() else {
            return false;
        };
        if list == 0 || list % 4096 != 0 {
            return false;
        }
        let pages = (nr * 8).div_ceil(4096);
        if pages > 512 {
            return false;
        }
        let lists = P2M_FRAME_LISTS.0.get();
        for i in 0..pages {
            let Some(mfn) = crate::memory::pfn_to_mfn((list >> PAGE_SHIFT) + i) else {
                return false;
            };
            // SAFETY: page 1 of P2M_FRAME_LISTS, i < 512; only we write it, and the toolstack
            // reads it only during a save, while we are suspended.
            unsafe { (*lists)[1][i] = mfn };
        }
        let lists_va = lists as usize;
        let (Some(fll), Some(fl)) = (
            crate::memory::pfn_to_mfn(lists_va >> PAGE_SHIFT),
            crate::memory::pfn_to_mfn((lists_va >> PAGE_SHIFT) + 1),
        ) else {
            return false;
        };
        // SAFETY: page 0 of P2M_FRAME_LISTS, as above.
        unsafe { (*lists)[0][0] = fl };
        let arch = base + core::mem::offset_of!(SharedInfo, arch);
        // SAFETY: shared_info.arch inside the mapped shared_info page (shared with Xen and
        // read by the toolstack), written with volatile stores.
        unsafe {
            let a = arch as *mut xen_platform::abi::xen::ArchSharedInfo;
            core::ptr::addr_of_mut!((*a).max_pfn).write_volatile(nr as u64);
            core::ptr::addr_of_mut!((*a).pfn_to_mfn_frame_list_list).write_volatile(fll);
        }
        true
    }

    /// After `SCHEDOP_shutdown(SHUTDOWN_suspend)` returned 0 — a real resume: this is a new
    /// domain (`xl restore`, a migration's far end) whose memory is ours as it was, but whose
    /// `shared_info`, grant table and event channels are new. Map `shared_info` again (PV:
    /// at the machine address the restore wrote into start_info), read the console and
    /// XenStore pages and ports again (the toolstack made new channels), put the grant
    /// frames back, publish the p2m list again (PV). What drivers held is gone: event
    /// channels (closed: the ports are free numbers again), grants (a peer can no longer map
    /// them) and foreign mappings; drivers reconnect. Linux: `xen_hvm_post_suspend` /
    /// `xen_pv_post_suspend`, `gnttab_resume`, `xs_resume`.
    fn resume_platform(&self) -> Result<()> {
        let pv = self.pv.load(Ordering::Relaxed);
        if pv {
            let si_va = self.start_info.load(Ordering::Relaxed);
            // SAFETY: start_info stays mapped where it was at boot (the restore rewrote its
            // contents: the new shared_info, store and console frames and channels).
            let si = unsafe { (si_va as *const StartInfo).read_volatile() };
            if !self.map_shared_info_pv(si.shared_info) {
                return Err(Error::Invalid);
            }
            self.read_params_pv(&si);
            let _ = self.publish_p2m();
        } else {
            if !self.map_shared_info_pvh() {
                return Err(Error::Invalid);
            }
            self.read_params_pvh().map_err(|_| Error::Invalid)?;
        }
        self.unmask_all();
        self.resume_grants(pv)?;
        self.resumes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Clear every `evtchn_mask` bit. A PV restore gives the guest its saved `shared_info`
    /// with every port masked (libxc `handle_shared_info` sets the mask array to all ones;
    /// Linux unmasks what it binds again), and our waits skip masked ports — seen: the first
    /// XenStore reply after an `xl restore` never arrived. We never mask a port for good
    /// (upcalls are off; waits are polls), so no bit of ours is lost.
    fn unmask_all(&self) {
        for w in 0..EVTCHN_WORDS {
            if let Some((word, _)) = self.evtchn_word(MASK, (w * 64) as EvtchnPort) {
                word.store(0, Ordering::SeqCst);
            }
        }
    }

    /// PV, before a suspend: unmap `shared_info` from our page (its accessors see nothing
    /// until it is mapped again) and the grant frames.
    fn unmap_xen_pages_pv(&self) -> Result<()> {
        let page = SHARED_INFO_PAGE.0.get() as usize;
        self.shared_info.store(0, Ordering::Release);
        // SAFETY: update_va_mapping(va, 0, flags) (xen.h): our shared_info page's PTE emptied;
        // `shared_info` is 0 above, so nothing of ours reads it meanwhile.
        let r = unsafe {
            hypercall::hypercall5(
                HYPERVISOR_UPDATE_VA_MAPPING,
                page as u64,
                0,
                UVMF_INVLPG,
                0,
                0,
            )
        };
        if r < 0 {
            return Err(Error::from_xen_errno(r as i32));
        }
        self.unmap_grant_frames_pv()
    }

    /// PV: rewrite start_info's XenStore and console frames as pseudo-physical frames (for a
    /// save); returns the machine frames that were there.
    fn start_info_frames(&self) -> (u64, u64) {
        let si = self.start_info.load(Ordering::Relaxed) as *mut StartInfo;
        let store_pfn = self.store_pfn.load(Ordering::Relaxed);
        let cons_pfn = (self.console_ring.load(Ordering::Relaxed) >> PAGE_SHIFT) as u64;
        // SAFETY: start_info_t is mapped read-write where the PV entry found it (xen.h) and
        // read by the toolstack only while we are suspended; plain integer fields.
        unsafe {
            let store = core::ptr::addr_of_mut!((*si).store_mfn);
            let cons = core::ptr::addr_of_mut!((*si).console.dom_u.mfn);
            let old = (store.read_volatile(), cons.read_volatile());
            store.write_volatile(store_pfn);
            if old.1 != 0 {
                cons.write_volatile(cons_pfn);
            }
            old
        }
    }

    /// PV: put back the machine frames [`start_info_frames`](Self::start_info_frames) replaced
    /// (the suspend was cancelled or failed).
    fn restore_start_info_frames(&self, (store_mfn, cons_mfn): (u64, u64)) {
        let si = self.start_info.load(Ordering::Relaxed) as *mut StartInfo;
        // SAFETY: as in start_info_frames.
        unsafe {
            core::ptr::addr_of_mut!((*si).store_mfn).write_volatile(store_mfn);
            core::ptr::addr_of_mut!((*si).console.dom_u.mfn).write_volatile(cons_mfn);
        }
    }

    /// Real resumes so far (suspends that were not cancelled).
    pub fn resumes(&self) -> u32 {
        self.resumes.load(Ordering::Relaxed)
    }

    /// Whether this is a PV guest (else PVH).
    pub fn is_pv(&self) -> bool {
        self.pv.load(Ordering::Relaxed)
    }

    /// Copy the NUL-terminated command line at `src` (at most `MAX_GUEST_CMDLINE - 1` bytes).
    ///
    /// # Safety
    /// Only during init; `src` readable up to its NUL or `MAX_GUEST_CMDLINE` bytes.
    unsafe fn save_cmdline(&self, src: *const u8) {
        let dst = CMDLINE.0.get().cast::<u8>();
        let mut n = 0;
        while n < MAX_GUEST_CMDLINE - 1 {
            // SAFETY: (caller) `src + n` is readable; `dst + n` is inside CMDLINE, which no
            // one reads before init is over.
            let b = unsafe { src.add(n).read_volatile() };
            if b == 0 {
                break;
            }
            // SAFETY: as above.
            unsafe { dst.add(n).write(b) };
            n += 1;
        }
        self.cmdline_len.store(n, Ordering::Release);
    }

    /// The guest's command line (`extra=` in the xl config; PV: `start_info.cmd_line`, PVH:
    /// `hvm_start_info.cmdline_paddr`), as copied at boot; empty if it was not UTF-8.
    pub fn cmdline(&self) -> &str {
        let n = self.cmdline_len.load(Ordering::Acquire);
        // SAFETY: CMDLINE is written only during init, before `cmdline_len` is published.
        let bytes = unsafe { core::slice::from_raw_parts(CMDLINE.0.get().cast::<u8>(), n) };
        core::str::from_utf8(bytes).unwrap_or("")
    }

    /// `HVMOP_get_param` (hvm_op.h, params.h) for `DOMID_SELF`.
    pub fn hvm_param(&self, index: u32) -> Result<u64> {
        let mut p = XenHvmParam {
            domid: DOMID_SELF,
            pad: 0,
            index,
            value: 0,
        };
        // SAFETY: HVMOP_get_param takes a pointer to xen_hvm_param (hvm_op.h); `p` lives
        // across the call.
        rc(unsafe {
            hypercall2(
                HYPERVISOR_HVM_OP,
                HVMOP_GET_PARAM as u64,
                &mut p as *mut _ as u64,
            )
        })?;
        Ok(p.value)
    }

    /// Xen's version, `major << 16 | minor` (`xen_version(XENVER_version, NULL)`, version.h).
    pub fn version(&self) -> u32 {
        // SAFETY: XENVER_version (0) takes no argument buffer.
        let r = unsafe { hypercall2(HYPERVISOR_XEN_VERSION, 0, 0) };
        r.max(0) as u32
    }

    /// Xen's CPUID base leaf (0 in PV, where CPUID is not intercepted).
    pub fn cpuid_base(&self) -> u32 {
        self.cpuid_base.load(Ordering::Relaxed)
    }

    /// Physical address of `hvm_start_info`.
    pub fn start_info(&self) -> u64 {
        self.start_info.load(Ordering::Relaxed)
    }

    /// The xenstore ring page (`HVM_PARAM_STORE_PFN`, identity-mapped) and its local port.
    pub fn store(&self) -> Option<(NonNull<u8>, EvtchnPort)> {
        let pfn = self.store_pfn.load(Ordering::Relaxed);
        let addr = NonNull::new((pfn << PAGE_SHIFT) as usize as *mut u8)?;
        Some((addr, self.store_port.load(Ordering::Relaxed)))
    }

    /// The XenStore ring on the page xenstored shares with us, and its event channel — once:
    /// the ring has exactly one user in an image. `None` without a xenstore page, or when it
    /// was taken already. This is the only `unsafe` an image needed to reach XenStore; it
    /// lives here, where the page's provenance is known.
    pub fn take_store_ring(&self) -> Option<(XsGuestRing, EvtchnPort)> {
        let (page, port) = self.store()?;
        if self.store_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: `page` is the xenstore ring page (HVM_PARAM_STORE_PFN / start_info.store_mfn)
        // that boot mapped for the domain's life (identity-mapped in PVH, bootstrap region in
        // PV), shared only with xenstored; `store_taken` makes this the only `XsGuestRing` on
        // it, and nothing in the runtime makes references to it.
        let ring = unsafe { XsGuestRing::new(page) }.ok()?;
        Some((ring, port))
    }

    fn shared(&self) -> Option<usize> {
        match self.shared_info.load(Ordering::Acquire) {
            0 => None,
            a => Some(a),
        }
    }

    fn upcall_mask_byte(&self) -> &AtomicU8 {
        let base = self.shared().expect("shared_info mapped");
        // SAFETY: vcpu_info[0] is at offset 0 of the mapped shared_info page; the byte is
        // shared with Xen, hence atomic.
        unsafe { AtomicU8::from_ptr((base + UPCALL_MASK) as *mut u8) }
    }

    /// The word of `evtchn_pending` (or `evtchn_mask`) holding `port`, and the port's bit.
    fn evtchn_word(&self, array: usize, port: EvtchnPort) -> Option<(&AtomicU64, u64)> {
        if port >= EVTCHN_2L_NR_CHANNELS {
            return None;
        }
        let base = self.shared()?;
        let word = base + array + (port as usize / 64) * 8;
        // SAFETY: inside the mapped shared_info page (port < EVTCHN_2L_NR_CHANNELS); the
        // words are shared with Xen, hence atomic (Xen sets/clears them with locked ops).
        Some((
            unsafe { AtomicU64::from_ptr(word as *mut u64) },
            1 << (port % 64),
        ))
    }

    fn evtchn_op<T>(&self, cmd: u32, arg: &mut T) -> Result<()> {
        // SAFETY: `arg` is the argument structure of `cmd` (event_channel.h), alive across
        // the call.
        rc(unsafe {
            hypercall2(
                HYPERVISOR_EVENT_CHANNEL_OP,
                cmd as u64,
                arg as *mut T as u64,
            )
        })
    }

    fn sched_op<T>(&self, cmd: u32, arg: *mut T) -> i64 {
        // SAFETY: `arg` is null or the argument structure of `cmd` (sched.h), alive across
        // the call.
        unsafe { hypercall2(HYPERVISOR_SCHED_OP, cmd as u64, arg as u64) }
    }

    /// Xen system time in ns (pvclock), if `shared_info` is mapped and Xen filled it.
    fn system_time(&self) -> Option<u64> {
        let base = self.shared()? + TIME;
        let ptr = base as *const VcpuTimeInfo;
        loop {
            // SAFETY: vcpu_info[0].time inside the mapped shared_info page. Xen updates it
            // under the `version` seqlock (odd while writing): read volatile, retry on change.
            let v1 = unsafe { core::ptr::addr_of!((*ptr).version).read_volatile() };
            fence(Ordering::Acquire);
            // SAFETY: as above.
            let t = unsafe { ptr.read_volatile() };
            let tsc = rdtsc();
            fence(Ordering::Acquire);
            // SAFETY: as above.
            let v2 = unsafe { core::ptr::addr_of!((*ptr).version).read_volatile() };
            if v1 & 1 != 0 || v1 != v2 {
                core::hint::spin_loop();
                continue;
            }
            if t.tsc_to_system_mul == 0 {
                return None;
            }
            let mut delta = tsc.wrapping_sub(t.tsc_timestamp);
            if t.tsc_shift >= 0 {
                delta <<= t.tsc_shift as u32;
            } else {
                delta >>= (-t.tsc_shift) as u32;
            }
            let ns = ((delta as u128 * t.tsc_to_system_mul as u128) >> 32) as u64;
            return Some(t.system_time.wrapping_add(ns));
        }
    }

    /// Write to the PV console ring (waiting, bounded, for the daemon to make room).
    fn console_ring_write(&self, mut bytes: &[u8]) {
        let ring = self.console_ring.load(Ordering::Acquire);
        if ring == 0 {
            return;
        }
        let port = self.console_port.load(Ordering::Relaxed);
        let out = ring + core::mem::offset_of!(XenconsInterface, out);
        // SAFETY: the console page (HVM_PARAM_CONSOLE_PFN, identity-mapped) is shared with
        // xenconsoled; its indexes are accessed atomically, data bytes with volatile writes.
        let (cons, prod) = unsafe {
            (
                AtomicU32::from_ptr(
                    (ring + core::mem::offset_of!(XenconsInterface, out_cons)) as *mut u32,
                ),
                AtomicU32::from_ptr(
                    (ring + core::mem::offset_of!(XenconsInterface, out_prod)) as *mut u32,
                ),
            )
        };
        let mut spins = 0u32;
        while !bytes.is_empty() {
            let c = cons.load(Ordering::Acquire);
            let mut p = prod.load(Ordering::Relaxed);
            let space = XENCONS_OUT_SIZE - (p.wrapping_sub(c) as usize).min(XENCONS_OUT_SIZE);
            if space == 0 {
                let _ = self.notify(port);
                spins += 1;
                if spins > 1000 {
                    return; // daemon gone: drop the rest (best effort)
                }
                let _ = self.wait(&[port], Some(Duration::from_millis(1)));
                self.clear(port);
                continue;
            }
            let n = space.min(bytes.len());
            for &b in &bytes[..n] {
                let at = out + (p as usize & (XENCONS_OUT_SIZE - 1));
                // SAFETY: inside `out` of the shared console page (masked index).
                unsafe { (at as *mut u8).write_volatile(b) };
                p = p.wrapping_add(1);
            }
            prod.store(p, Ordering::Release);
            bytes = &bytes[n..];
            let _ = self.notify(port);
        }
    }
}

impl Events for Xen {
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort> {
        let mut a = EvtchnAllocUnbound {
            dom: DOMID_SELF,
            remote_dom: remote,
            port: 0,
        };
        self.evtchn_op(EVTCHNOP_ALLOC_UNBOUND, &mut a)?;
        Ok(a.port)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort> {
        let mut b = EvtchnBindInterdomain {
            remote_dom: remote,
            _pad0: [0; 2],
            remote_port,
            local_port: 0,
        };
        self.evtchn_op(EVTCHNOP_BIND_INTERDOMAIN, &mut b)?;
        Ok(b.local_port)
    }

    fn notify(&self, port: EvtchnPort) -> Result<()> {
        self.evtchn_op(EVTCHNOP_SEND, &mut EvtchnSend { port })
    }

    fn close(&self, port: EvtchnPort) -> Result<()> {
        self.evtchn_op(EVTCHNOP_CLOSE, &mut EvtchnClose { port })
    }

    fn mask(&self, port: EvtchnPort) -> Result<()> {
        let (w, bit) = self.evtchn_word(MASK, port).ok_or(Error::Invalid)?;
        w.fetch_or(bit, Ordering::SeqCst);
        Ok(())
    }

    fn unmask(&self, port: EvtchnPort) -> Result<()> {
        self.evtchn_op(EVTCHNOP_UNMASK, &mut EvtchnUnmask { port })
    }

    fn is_pending(&self, port: EvtchnPort) -> bool {
        self.evtchn_word(PENDING, port)
            .is_some_and(|(w, bit)| w.load(Ordering::SeqCst) & bit != 0)
    }

    fn clear(&self, port: EvtchnPort) -> bool {
        self.evtchn_word(PENDING, port)
            .is_some_and(|(w, bit)| w.fetch_and(!bit, Ordering::SeqCst) & bit != 0)
    }

    fn wait(&self, ports: &[EvtchnPort], timeout: Option<Duration>) -> Result<EvtchnPort> {
        let deadline = timeout.map(|t| self.now().saturating_add(t));
        let ready = |x: &Xen| {
            ports.iter().copied().find(|&p| {
                x.is_pending(p)
                    && x.evtchn_word(MASK, p)
                        .is_none_or(|(w, bit)| w.load(Ordering::SeqCst) & bit == 0)
            })
        };
        loop {
            if let Some(p) = ready(self) {
                return Ok(p);
            }
            let now = self.now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout);
            }
            // Absolute Xen system time; 0 = no timeout (sched.h). Without pvclock we cannot
            // express a deadline in Xen's time: wake after a short while and re-check.
            let abs = match (deadline, self.system_time()) {
                (Some(d), Some(_)) => d.as_nanos() as u64,
                (None, _) => 0,
                (Some(_), None) => {
                    self.yield_now();
                    continue;
                }
            };
            // SCHEDOP_poll takes at most 128 ports (Xen common/sched/core.c do_poll: "Fairly
            // arbitrary limit", -EINVAL above). With more, poll the first 128 and wake every
            // millisecond to scan the others' pending bits.
            let mut list = [0 as EvtchnPort; MAX_POLL_PORTS];
            let n = ports.len().min(list.len());
            list[..n].copy_from_slice(&ports[..n]);
            let abs = if ports.len() > MAX_POLL_PORTS {
                let soon = now.saturating_add(Duration::from_millis(1)).as_nanos() as u64;
                if abs == 0 {
                    soon
                } else {
                    abs.min(soon)
                }
            } else {
                abs
            };
            let mut poll = SchedPoll {
                ports: GuestHandle::new(list.as_mut_ptr()),
                nr_ports: n as u32,
                _pad0: [0; 4],
                timeout: abs,
            };
            if self.shared().is_none() {
                // Cannot see pending bits: one bounded poll, then report what we know.
                let _ = self.sched_op(SCHEDOP_YIELD, core::ptr::null_mut::<u8>());
                return if deadline.is_some() {
                    Err(Error::Timeout)
                } else {
                    Err(Error::Unsupported)
                };
            }
            let r = self.sched_op(SCHEDOP_POLL, &mut poll);
            if r < 0 {
                return Err(Error::from_xen_errno(r as i32));
            }
        }
    }
}

impl Clock for Xen {
    fn now(&self) -> Duration {
        // Xen system time when available; otherwise the TSC at an assumed 1 GHz.
        static LAST: AtomicU64 = AtomicU64::new(0);
        let ns = self.system_time().unwrap_or_else(rdtsc);
        let prev = LAST.fetch_max(ns, Ordering::Relaxed);
        Duration::from_nanos(ns.max(prev))
    }
}

impl Console for Xen {
    fn write(&self, bytes: &[u8]) {
        hypercall::debug_port_write(bytes);
        self.console_ring_write(bytes);
    }
}

impl Scheduler for Xen {
    fn yield_now(&self) {
        let _ = self.sched_op(SCHEDOP_YIELD, core::ptr::null_mut::<u8>());
    }

    fn block(&self, timeout: Option<Duration>) {
        // SCHEDOP_block would unmask upcalls (sched.h): poll on no port until the timeout.
        let abs = match timeout {
            Some(t) => self.now().saturating_add(t).as_nanos() as u64,
            None => 0,
        };
        let mut poll = SchedPoll {
            ports: GuestHandle::null(),
            nr_ports: 0,
            _pad0: [0; 4],
            timeout: abs,
        };
        let _ = self.sched_op(SCHEDOP_POLL, &mut poll);
    }

    /// `SCHEDOP_shutdown`. For `Suspend` a PV guest passes its start_info's machine frame as
    /// the third argument (sched.h: "the guest passes the MFN of its start_info in rdx"; the
    /// restore rewrites that page), a PVH guest 0. When a suspend returns 0 (a real resume)
    /// the platform is re-established before this returns (see `resume_platform`); an error
    /// doing so is returned as the result.
    fn shutdown(&self, reason: ShutdownReason) -> Result<bool> {
        let mut arg = SchedShutdown {
            reason: reason as u32,
        };
        let suspend = reason == ShutdownReason::Suspend;
        let srec = if suspend && self.is_pv() {
            let va = self.start_info.load(Ordering::Relaxed) as usize;
            crate::memory::pfn_to_mfn(va >> PAGE_SHIFT).ok_or(Error::Invalid)?
        } else {
            0
        };
        // PV: the save reads the XenStore and console frames from start_info as
        // pseudo-physical frames (libxc's restore refuses "XenStore pfn ... out of range"
        // otherwise); Linux's xen_pre_suspend converts them the same way, and back when the
        // suspend is cancelled. A real restore writes the new machine frames there.
        let saved_mfns = if srec != 0 {
            Some(self.start_info_frames())
        } else {
            None
        };
        // PV: no page-table entry may point at Xen's pages (shared_info, the grant frames)
        // while the save reads our page tables (Linux xen_pre_suspend / gnttab_suspend).
        // A failure leaves whatever is still mapped to fail the save (the toolstack says so);
        // what was unmapped is mapped again below when we go on as the same domain.
        let pv_unmapped = srec != 0;
        if pv_unmapped {
            let _ = self.unmap_xen_pages_pv();
        }
        // sched.h: SCHEDOP_shutdown takes a pointer to struct sched_shutdown.
        // SAFETY: `arg` lives across the call; the third argument is a frame number.
        let r = unsafe {
            hypercall::hypercall5(
                HYPERVISOR_SCHED_OP,
                SCHEDOP_SHUTDOWN as u64,
                &mut arg as *mut _ as u64,
                srec,
                0,
                0,
            )
        };
        // Returns only for suspend: r != 0 means the suspend was cancelled. But libxl sets
        // that return value only for PV guests and HVM guests with an event-channel callback
        // (libxc `modify_returncode`: "HVM guests without PV drivers have no return code to
        // modify"); our PVH guests keep upcalls masked and set none, so a cancelled suspend
        // (`xl save -c`) returns 0 there too. Whether the domain is a new one is told by its
        // grant table: a restored domain starts with a table of one or two frames, not ours.
        let cancelled = r != 0 || (suspend && self.grant_frames_kept() == Some(true));
        if let Some(mfns) = saved_mfns.filter(|_| r < 0 || cancelled) {
            self.restore_start_info_frames(mfns);
        }
        if pv_unmapped && (r < 0 || cancelled) {
            // The same domain: map its shared_info and grant frames again where they were.
            // SAFETY: start_info is mapped where the PV entry found it (xen.h).
            let si = unsafe {
                (self.start_info.load(Ordering::Relaxed) as *const StartInfo).read_volatile()
            };
            if !self.map_shared_info_pv(si.shared_info) {
                return Err(Error::Invalid);
            }
            self.resume_grants(true)?;
        }
        if r < 0 {
            return Err(Error::from_xen_errno(r as i32));
        }
        if suspend && !cancelled {
            self.resume_platform()?;
        }
        Ok(cancelled)
    }
}

impl core::fmt::Write for &Xen {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        Console::write(*self, s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_headers() {
        assert_eq!(PENDING, 2048);
        assert_eq!(MASK, 2560);
        assert_eq!(TIME, 32);
        assert_eq!(UPCALL_MASK, 1);
    }

    #[test]
    fn uninitialised_platform_fails_cleanly() {
        let x = Xen::get();
        assert!(x.store().is_none());
        assert!(!x.is_pending(1));
        assert!(!x.clear(1));
        assert_eq!(x.notify(1), Err(Error::Unsupported));
        assert_eq!(x.mask(1), Err(Error::Invalid));
    }
}
