//! `xen.h`, `arch-x86/xen.h` and `arch-x86/xen-x86_64.h`: hypercall numbers, guest handles,
//! `start_info`, `shared_info`, `vcpu_info`.
//!
//! Layouts are those of an x86_64 guest (`__x86_64__`): `unsigned long`, `xen_ulong_t` and
//! `xen_pfn_t` are 64 bits wide.

use core::fmt;

use super::{DomId, EvtchnPort, Pod, XenPfn};

/// `xen_ulong_t` (arch-x86/xen.h: `unsigned long`).
pub type XenUlong = u64;

/// `XEN_GUEST_HANDLE(T)` on x86 (arch-x86/xen.h, interface version >= 0x00030201):
/// `typedef struct { T *p; } __guest_handle_T`, i.e. one pointer, 8 bytes on x86_64.
///
/// Guest handles carry guest virtual addresses into hypercall arguments; they are not `Pod`
/// (a pointer is not meaningful in memory a peer writes).
#[repr(transparent)]
pub struct GuestHandle<T> {
    /// The guest virtual address (the C field `p`).
    pub p: *mut T,
}

impl<T> GuestHandle<T> {
    /// A null handle (`set_xen_guest_handle(h, NULL)`).
    pub const fn null() -> Self {
        Self {
            p: core::ptr::null_mut(),
        }
    }

    /// A handle pointing at `p` (`set_xen_guest_handle(h, p)`).
    pub const fn new(p: *mut T) -> Self {
        Self { p }
    }

    /// Whether the handle is null (`guest_handle_is_null`).
    pub fn is_null(&self) -> bool {
        self.p.is_null()
    }
}

impl<T> Clone for GuestHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for GuestHandle<T> {}

impl<T> Default for GuestHandle<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T> fmt::Debug for GuestHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestHandle({:p})", self.p)
    }
}

// ---------------------------------------------------------------------------------------------
// Hypercall numbers (xen.h, "enum hypercall").
// ---------------------------------------------------------------------------------------------

/// `__HYPERVISOR_set_trap_table`.
pub const HYPERVISOR_SET_TRAP_TABLE: u32 = 0;
/// `__HYPERVISOR_mmu_update`.
pub const HYPERVISOR_MMU_UPDATE: u32 = 1;
/// `__HYPERVISOR_set_gdt`.
pub const HYPERVISOR_SET_GDT: u32 = 2;
/// `__HYPERVISOR_stack_switch`.
pub const HYPERVISOR_STACK_SWITCH: u32 = 3;
/// `__HYPERVISOR_set_callbacks`.
pub const HYPERVISOR_SET_CALLBACKS: u32 = 4;
/// `__HYPERVISOR_fpu_taskswitch`.
pub const HYPERVISOR_FPU_TASKSWITCH: u32 = 5;
/// `__HYPERVISOR_sched_op_compat` (compat since 0x00030101).
pub const HYPERVISOR_SCHED_OP_COMPAT: u32 = 6;
/// `__HYPERVISOR_platform_op`.
pub const HYPERVISOR_PLATFORM_OP: u32 = 7;
/// `__HYPERVISOR_set_debugreg`.
pub const HYPERVISOR_SET_DEBUGREG: u32 = 8;
/// `__HYPERVISOR_get_debugreg`.
pub const HYPERVISOR_GET_DEBUGREG: u32 = 9;
/// `__HYPERVISOR_update_descriptor`.
pub const HYPERVISOR_UPDATE_DESCRIPTOR: u32 = 10;
/// `__HYPERVISOR_memory_op`.
pub const HYPERVISOR_MEMORY_OP: u32 = 12;
/// `__HYPERVISOR_multicall`.
pub const HYPERVISOR_MULTICALL: u32 = 13;
/// `__HYPERVISOR_update_va_mapping`.
pub const HYPERVISOR_UPDATE_VA_MAPPING: u32 = 14;
/// `__HYPERVISOR_set_timer_op`.
pub const HYPERVISOR_SET_TIMER_OP: u32 = 15;
/// `__HYPERVISOR_event_channel_op_compat` (compat since 0x00030202).
pub const HYPERVISOR_EVENT_CHANNEL_OP_COMPAT: u32 = 16;
/// `__HYPERVISOR_xen_version`.
pub const HYPERVISOR_XEN_VERSION: u32 = 17;
/// `__HYPERVISOR_console_io`.
pub const HYPERVISOR_CONSOLE_IO: u32 = 18;
/// `__HYPERVISOR_physdev_op_compat` (compat since 0x00030202).
pub const HYPERVISOR_PHYSDEV_OP_COMPAT: u32 = 19;
/// `__HYPERVISOR_grant_table_op`.
pub const HYPERVISOR_GRANT_TABLE_OP: u32 = 20;
/// `__HYPERVISOR_vm_assist`.
pub const HYPERVISOR_VM_ASSIST: u32 = 21;
/// `__HYPERVISOR_update_va_mapping_otherdomain`.
pub const HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN: u32 = 22;
/// `__HYPERVISOR_iret` (x86 only).
pub const HYPERVISOR_IRET: u32 = 23;
/// `__HYPERVISOR_vcpu_op`.
pub const HYPERVISOR_VCPU_OP: u32 = 24;
/// `__HYPERVISOR_set_segment_base` (x86/64 only).
pub const HYPERVISOR_SET_SEGMENT_BASE: u32 = 25;
/// `__HYPERVISOR_mmuext_op`.
pub const HYPERVISOR_MMUEXT_OP: u32 = 26;
/// `__HYPERVISOR_xsm_op`.
pub const HYPERVISOR_XSM_OP: u32 = 27;
/// `__HYPERVISOR_nmi_op`.
pub const HYPERVISOR_NMI_OP: u32 = 28;
/// `__HYPERVISOR_sched_op`.
pub const HYPERVISOR_SCHED_OP: u32 = 29;
/// `__HYPERVISOR_callback_op`.
pub const HYPERVISOR_CALLBACK_OP: u32 = 30;
/// `__HYPERVISOR_xenoprof_op`.
pub const HYPERVISOR_XENOPROF_OP: u32 = 31;
/// `__HYPERVISOR_event_channel_op`.
pub const HYPERVISOR_EVENT_CHANNEL_OP: u32 = 32;
/// `__HYPERVISOR_physdev_op`.
pub const HYPERVISOR_PHYSDEV_OP: u32 = 33;
/// `__HYPERVISOR_hvm_op`.
pub const HYPERVISOR_HVM_OP: u32 = 34;
/// `__HYPERVISOR_sysctl`.
pub const HYPERVISOR_SYSCTL: u32 = 35;
/// `__HYPERVISOR_domctl`.
pub const HYPERVISOR_DOMCTL: u32 = 36;
/// `__HYPERVISOR_kexec_op`.
pub const HYPERVISOR_KEXEC_OP: u32 = 37;
/// `__HYPERVISOR_tmem_op`.
pub const HYPERVISOR_TMEM_OP: u32 = 38;
/// `__HYPERVISOR_argo_op`.
pub const HYPERVISOR_ARGO_OP: u32 = 39;
/// `__HYPERVISOR_xenpmu_op`.
pub const HYPERVISOR_XENPMU_OP: u32 = 40;
/// `__HYPERVISOR_dm_op`.
pub const HYPERVISOR_DM_OP: u32 = 41;
/// `__HYPERVISOR_hypfs_op`.
pub const HYPERVISOR_HYPFS_OP: u32 = 42;
/// `__HYPERVISOR_arch_0` (architecture-specific).
pub const HYPERVISOR_ARCH_0: u32 = 48;
/// `__HYPERVISOR_arch_1` (architecture-specific).
pub const HYPERVISOR_ARCH_1: u32 = 49;
/// `__HYPERVISOR_arch_2` (architecture-specific).
pub const HYPERVISOR_ARCH_2: u32 = 50;
/// `__HYPERVISOR_arch_3` (architecture-specific).
pub const HYPERVISOR_ARCH_3: u32 = 51;
/// `__HYPERVISOR_arch_4` (architecture-specific).
pub const HYPERVISOR_ARCH_4: u32 = 52;
/// `__HYPERVISOR_arch_5` (architecture-specific).
pub const HYPERVISOR_ARCH_5: u32 = 53;
/// `__HYPERVISOR_arch_6` (architecture-specific).
pub const HYPERVISOR_ARCH_6: u32 = 54;
/// `__HYPERVISOR_arch_7` (architecture-specific).
pub const HYPERVISOR_ARCH_7: u32 = 55;

/// `CONSOLEIO_write` (xen.h): `console_io(CONSOLEIO_write, len, buf)`.
pub const CONSOLEIO_WRITE: u32 = 0;
/// `CONSOLEIO_read` (xen.h).
pub const CONSOLEIO_READ: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Domain ids (xen.h). DOMID_SELF and DOMID_FIRST_RESERVED live in `abi`.
// ---------------------------------------------------------------------------------------------

/// `DOMID_IO`: I/O memory owner.
pub const DOMID_IO: DomId = 0x7FF1;
/// `DOMID_XEN`: pages owned by Xen itself.
pub const DOMID_XEN: DomId = 0x7FF2;
/// `DOMID_COW`: copy-on-write (shared) pages.
pub const DOMID_COW: DomId = 0x7FF3;
/// `DOMID_INVALID`: pages of unknown owner.
pub const DOMID_INVALID: DomId = 0x7FF4;
/// `DOMID_IDLE`: the idle domain.
pub const DOMID_IDLE: DomId = 0x7FFF;
/// `DOMID_MASK`: mask of valid domain id bits.
pub const DOMID_MASK: DomId = 0x7FFF;

// ---------------------------------------------------------------------------------------------
// vcpu_info / shared_info (xen.h, arch-x86/xen.h, arch-x86/xen-x86_64.h).
// ---------------------------------------------------------------------------------------------

/// `XEN_LEGACY_MAX_VCPUS` (arch-x86/xen.h): `vcpu_info` slots in `shared_info`.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// `XEN_PVCLOCK_TSC_STABLE_BIT` (xen.h): `vcpu_time_info.flags`.
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// `XEN_PVCLOCK_GUEST_STOPPED` (xen.h): `vcpu_time_info.flags`.
pub const XEN_PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// `struct vcpu_time_info` (xen.h, interface version > 0x040600): 32 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record (seqlock-like).
    pub version: u32,
    /// C `pad0`.
    pub pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// Nanoseconds since boot at `tsc_timestamp`.
    pub system_time: u64,
    /// Multiplier converting (shifted) TSC deltas to nanoseconds (32.32 fixed point).
    pub tsc_to_system_mul: u32,
    /// Shift applied to TSC deltas before multiplying.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    /// C `pad1[2]`.
    pub pad1: [u8; 2],
}

/// `struct arch_vcpu_info` (arch-x86/xen-x86_64.h): 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchVcpuInfo {
    /// Faulting address of the last page fault (PV).
    pub cr2: u64,
    /// C `pad` (keeps `sizeof(vcpu_info_t) == 64`).
    pub pad: u64,
}

/// `struct vcpu_info` (xen.h, with `XEN_HAVE_PV_UPCALL_MASK`): 64 bytes on x86.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuInfo {
    /// Set by Xen when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Non-zero: no upcall is delivered to this vCPU.
    pub evtchn_upcall_mask: u8,
    /// Implicit C padding, explicit here (so the type has no padding bytes).
    pub _pad0: [u8; 6],
    /// One bit per word of `shared_info.evtchn_pending` that has a pending, unmasked port.
    pub evtchn_pending_sel: XenUlong,
    /// `struct arch_vcpu_info`.
    pub arch: ArchVcpuInfo,
    /// `vcpu_time_info_t`.
    pub time: VcpuTimeInfo,
}

/// `struct arch_shared_info` (arch-x86/xen.h, x86_64): 48 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchSharedInfo {
    /// Number of valid entries in the p2m table(s).
    pub max_pfn: u64,
    /// Frame of the list of frames of the list of p2m frames.
    pub pfn_to_mfn_frame_list_list: XenPfn,
    /// NMI reason bits.
    pub nmi_reason: u64,
    /// cr3 of the address space where `p2m_vaddr` is valid.
    pub p2m_cr3: u64,
    /// Virtual address of the linear p2m list.
    pub p2m_vaddr: u64,
    /// Generation count of the p2m mapping.
    pub p2m_generation: u64,
}

/// Number of `xen_ulong_t` words in `shared_info.evtchn_pending`/`evtchn_mask`
/// (`sizeof(xen_ulong_t) * 8`).
pub const EVTCHN_WORDS: usize = core::mem::size_of::<XenUlong>() * 8;

/// `struct shared_info` (xen.h): 3136 bytes on x86_64.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedInfo {
    /// Per-vCPU info for the first [`XEN_LEGACY_MAX_VCPUS`] vCPUs.
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// 2-level event channel pending bits, one per port.
    pub evtchn_pending: [XenUlong; EVTCHN_WORDS],
    /// 2-level event channel mask bits, one per port.
    pub evtchn_mask: [XenUlong; EVTCHN_WORDS],
    /// Wallclock version counter (as `vcpu_time_info.version`).
    pub wc_version: u32,
    /// Wallclock seconds since the epoch (low 32 bits).
    pub wc_sec: u32,
    /// Wallclock nanoseconds.
    pub wc_nsec: u32,
    /// Wallclock seconds, high 32 bits (not i386).
    pub wc_sec_hi: u32,
    /// `struct arch_shared_info`.
    pub arch: ArchSharedInfo,
}

// ---------------------------------------------------------------------------------------------
// start_info (xen.h, XEN_HAVE_PV_GUEST_ENTRY): what a PV guest finds in rsi at entry.
// ---------------------------------------------------------------------------------------------

/// `MAX_GUEST_CMDLINE` (xen.h).
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// `SIF_PRIVILEGED` (xen.h): the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `SIF_INITDOMAIN`: this is the initial control domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `SIF_MULTIBOOT_MOD`: `mod_start` is a multiboot module.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `SIF_MOD_START_PFN`: `mod_start` is a PFN.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// `SIF_VIRT_P2M_4TOOLS`: tools understand a virtually mapped p2m.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// `SIF_PM_MASK`: one byte reserved for xen-pm options.
pub const SIF_PM_MASK: u32 = 0xFF << 8;

/// `start_info.console.domU` (xen.h): the console ring of an unprivileged guest.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartInfoConsoleDomU {
    /// Machine frame of the console page (C `mfn`).
    pub mfn: XenPfn,
    /// Event channel of the console (C `evtchn`).
    pub evtchn: u32,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 4],
}

/// `start_info.console.dom0` (xen.h): where dom0 finds its `dom0_vga_console_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartInfoConsoleDom0 {
    /// Offset of the console_info struct (from `start_info`).
    pub info_off: u32,
    /// Size of the console_info struct.
    pub info_size: u32,
}

/// `start_info.console` (xen.h): `union { domU; dom0; }`, 16 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub union StartInfoConsole {
    /// C `domU`: valid for every guest that is not the initial domain.
    pub dom_u: StartInfoConsoleDomU,
    /// C `dom0`: valid when `SIF_INITDOMAIN` is set.
    pub dom0: StartInfoConsoleDom0,
}

impl fmt::Debug for StartInfoConsole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: both variants are Pod and `dom_u` covers all 16 bytes.
        let d = unsafe { self.dom_u };
        f.debug_struct("StartInfoConsole")
            .field("dom_u", &d)
            .finish()
    }
}

/// `struct start_info` (xen.h): 1168 bytes on x86_64.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"` (C `char magic[32]`).
    pub magic: [u8; 32],
    /// Total pages allocated to this domain.
    pub nr_pages: u64,
    /// Machine address of the shared info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Implicit C padding, explicit here.
    pub _pad0: [u8; 4],
    /// Machine frame of the XenStore page.
    pub store_mfn: XenPfn,
    /// Event channel of the XenStore ring.
    pub store_evtchn: EvtchnPort,
    /// Implicit C padding, explicit here.
    pub _pad1: [u8; 4],
    /// Console ring (domU) or console info (dom0).
    pub console: StartInfoConsole,
    /// Virtual address of the page directory.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the page-frame list.
    pub mfn_list: u64,
    /// Virtual address (or PFN with `SIF_MOD_START_PFN`) of a pre-loaded module.
    pub mod_start: u64,
    /// Size in bytes of the pre-loaded module.
    pub mod_len: u64,
    /// Command line (C `int8_t cmd_line[MAX_GUEST_CMDLINE]`), NUL-terminated.
    pub cmd_line: [i8; MAX_GUEST_CMDLINE],
    /// First pfn forming the initial P->M table.
    pub first_p2m_pfn: u64,
    /// Number of pfns forming the initial P->M table.
    pub nr_p2m_frames: u64,
}

// SAFETY: repr(C), integers and arrays of integers only, no padding bytes.
unsafe impl Pod for VcpuTimeInfo {}
// SAFETY: as above.
unsafe impl Pod for ArchVcpuInfo {}
// SAFETY: as above (padding made explicit).
unsafe impl Pod for VcpuInfo {}
// SAFETY: as above.
unsafe impl Pod for ArchSharedInfo {}
// SAFETY: as above.
unsafe impl Pod for SharedInfo {}
// SAFETY: as above.
unsafe impl Pod for StartInfoConsoleDomU {}
// SAFETY: as above.
unsafe impl Pod for StartInfoConsoleDom0 {}
// SAFETY: a union of Pod types; `dom_u` spans all of it, so every bit pattern is valid.
unsafe impl Pod for StartInfoConsole {}
// SAFETY: repr(C), integers, arrays of integers and a Pod union, padding made explicit.
unsafe impl Pod for StartInfo {}

/// Port `port`'s word index and bit in `shared_info.evtchn_pending`/`evtchn_mask`.
pub const fn evtchn_word_bit(port: EvtchnPort) -> (usize, u32) {
    let bits = XenUlong::BITS;
    ((port / bits) as usize, port % bits)
}

// Sizes measured from the installed Xen 4.17 headers (see ci/abi-oracle for every offset).
const _: () = assert!(core::mem::size_of::<VcpuTimeInfo>() == 32);
const _: () = assert!(core::mem::size_of::<VcpuInfo>() == 64);
const _: () = assert!(core::mem::size_of::<SharedInfo>() == 3136);
const _: () = assert!(core::mem::offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(core::mem::offset_of!(SharedInfo, evtchn_mask) == 2560);
const _: () = assert!(core::mem::size_of::<StartInfo>() == 1168);
const _: () = assert!(core::mem::offset_of!(StartInfo, console) == 72);
const _: () = assert!(core::mem::offset_of!(StartInfo, cmd_line) == 128);
const _: () = assert!(core::mem::size_of::<GuestHandle<u8>>() == 8);

/// `struct mmu_update` (xen.h): `ptr` = machine address of the page-table entry | `MMU_*`,
/// `val` = the new entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmuUpdate {
    /// Machine address of the page-table entry, low 2 bits `MMU_*`.
    pub ptr: u64,
    /// The new entry.
    pub val: u64,
}
/// `MMU_NORMAL_PT_UPDATE` (xen.h): a checked update of one page-table entry.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `UVMF_INVLPG` (xen.h): after `update_va_mapping`, flush only the one TLB entry.
pub const UVMF_INVLPG: u64 = 2;
/// `MACH2PHYS_VIRT_START` (arch-x86/xen-x86_64.h): the read-only machine-to-physical table
/// every 64-bit PV guest sees.
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
