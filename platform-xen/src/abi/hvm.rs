//! HVM/PVH: `arch-x86/hvm/start_info.h` (the PVH boot structure), `hvm/hvm_op.h`
//! (`HVMOP_*`, `xen_hvm_param`) and `hvm/params.h` (`HVM_PARAM_*`).

use super::{DomId, Pod};

// ---------------------------------------------------------------------------------------------
// arch-x86/hvm/start_info.h
// ---------------------------------------------------------------------------------------------

/// `XEN_HVM_START_MAGIC_VALUE`: `hvm_start_info.magic` ("xEn3" with the 0x80 bit of "E").
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `XEN_HVM_MEMMAP_TYPE_RESERVED`.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// `XEN_HVM_MEMMAP_TYPE_ACPI`.
pub const XEN_HVM_MEMMAP_TYPE_ACPI: u32 = 3;
/// `XEN_HVM_MEMMAP_TYPE_NVS`.
pub const XEN_HVM_MEMMAP_TYPE_NVS: u32 = 4;
/// `XEN_HVM_MEMMAP_TYPE_UNUSABLE`.
pub const XEN_HVM_MEMMAP_TYPE_UNUSABLE: u32 = 5;
/// `XEN_HVM_MEMMAP_TYPE_DISABLED`.
pub const XEN_HVM_MEMMAP_TYPE_DISABLED: u32 = 6;
/// `XEN_HVM_MEMMAP_TYPE_PMEM`.
pub const XEN_HVM_MEMMAP_TYPE_PMEM: u32 = 7;

/// `struct hvm_start_info`: what a PVH guest finds at the physical address in ebx. 56 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvmStartInfo {
    /// [`XEN_HVM_START_MAGIC_VALUE`].
    pub magic: u32,
    /// Version of this structure (fields from `memmap_paddr` on: version >= 1).
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of modules passed to the kernel.
    pub nr_modules: u32,
    /// Physical address of an array of [`HvmModlistEntry`].
    pub modlist_paddr: u64,
    /// Physical address of the command line.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Physical address of an array of [`HvmMemmapTableEntry`] (version >= 1).
    pub memmap_paddr: u64,
    /// Number of memory map entries (0: none provided).
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `struct hvm_modlist_entry`: one module. 32 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvmModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Size of the module in bytes.
    pub size: u64,
    /// Physical address of its command line.
    pub cmdline_paddr: u64,
    /// Reserved.
    pub reserved: u64,
}

/// `struct hvm_memmap_table_entry`: one memory region. 24 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvmMemmapTableEntry {
    /// Base address of the region.
    pub addr: u64,
    /// Size of the region in bytes.
    pub size: u64,
    /// `XEN_HVM_MEMMAP_TYPE_*` (C `type`).
    pub type_: u32,
    /// Must be zero (version 1).
    pub reserved: u32,
}

// ---------------------------------------------------------------------------------------------
// hvm/hvm_op.h (guest-visible operations of interface 0x00040e00; tools-only ones and those
// removed in 0x00040900 are left out).
// ---------------------------------------------------------------------------------------------

/// `HVMOP_set_param` → [`XenHvmParam`].
pub const HVMOP_SET_PARAM: u32 = 0;
/// `HVMOP_get_param` → [`XenHvmParam`].
pub const HVMOP_GET_PARAM: u32 = 1;
/// `HVMOP_flush_tlbs`.
pub const HVMOP_FLUSH_TLBS: u32 = 5;
/// `HVMOP_pagetable_dying`.
pub const HVMOP_PAGETABLE_DYING: u32 = 9;
/// `HVMOP_get_time`.
pub const HVMOP_GET_TIME: u32 = 10;
/// `HVMOP_xentrace`.
pub const HVMOP_XENTRACE: u32 = 11;
/// `HVMOP_get_mem_type`.
pub const HVMOP_GET_MEM_TYPE: u32 = 15;
/// `HVMOP_set_evtchn_upcall_vector` (x86).
pub const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u32 = 23;
/// `HVMOP_guest_request_vm_event`.
pub const HVMOP_GUEST_REQUEST_VM_EVENT: u32 = 24;
/// `HVMOP_altp2m`.
pub const HVMOP_ALTP2M: u32 = 25;

/// `struct xen_hvm_param` (`HVMOP_set_param`/`HVMOP_get_param`): 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XenHvmParam {
    /// IN: the domain (`DOMID_SELF`).
    pub domid: DomId,
    /// C `pad`.
    pub pad: u16,
    /// IN: `HVM_PARAM_*`.
    pub index: u32,
    /// IN (set) / OUT (get): the value.
    pub value: u64,
}

// ---------------------------------------------------------------------------------------------
// hvm/params.h
// ---------------------------------------------------------------------------------------------

/// `HVM_PARAM_CALLBACK_IRQ`: how event-channel upcalls are delivered.
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// `HVM_PARAM_STORE_PFN`: guest frame of the XenStore ring page.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// `HVM_PARAM_STORE_EVTCHN`: event channel of the XenStore ring.
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `HVM_PARAM_CONSOLE_PFN`: guest frame of the PV console page.
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// `HVM_PARAM_CONSOLE_EVTCHN`: event channel of the PV console.
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
/// `HVM_NR_PARAMS`: number of HVM parameters.
pub const HVM_NR_PARAMS: u32 = 39;

// SAFETY: repr(C), integers only, no padding bytes.
unsafe impl Pod for HvmStartInfo {}
// SAFETY: as above.
unsafe impl Pod for HvmModlistEntry {}
// SAFETY: as above.
unsafe impl Pod for HvmMemmapTableEntry {}
// SAFETY: as above.
unsafe impl Pod for XenHvmParam {}

// Sizes measured from the installed Xen 4.17 headers (see ci/abi-oracle for every offset).
const _: () = assert!(core::mem::size_of::<HvmStartInfo>() == 56);
const _: () = assert!(core::mem::size_of::<HvmMemmapTableEntry>() == 24);
const _: () = assert!(core::mem::size_of::<XenHvmParam>() == 16);
