//! `xen_platform::abi` against the Xen public headers: every mirrored type, field and constant.

use abi_oracle::{check_consts, check_scalar, check_struct, check_union, Checker};
use xen_platform::abi::console::*;
use xen_platform::abi::event_channel::*;
use xen_platform::abi::grant_table::*;
use xen_platform::abi::hvm::*;
use xen_platform::abi::memory::*;
use xen_platform::abi::sched::*;
use xen_platform::abi::xen::*;
use xen_platform::abi::xs::*;
use xen_platform::abi::{self, DomId, EvtchnPort, GrantHandle, GrantRef, XenPfn};

#[test]
fn scalar_types() {
    let c = &mut Checker::new("scalar types");
    check_scalar!(c, DomId = domid_t);
    check_scalar!(c, GrantRef = grant_ref_t);
    check_scalar!(c, EvtchnPort = evtchn_port_t);
    check_scalar!(c, XenPfn = xen_pfn_t);
    check_scalar!(c, XenUlong = xen_ulong_t);
    check_scalar!(c, GrantHandle = grant_handle_t);
    check_scalar!(c, GrantStatus = grant_status_t);
    check_scalar!(c, XenstoreRingIdx = XENSTORE_RING_IDX);
    check_scalar!(c, XenconsRingIdx = XENCONS_RING_IDX);
    c.finish();
}

#[test]
fn xen_h() {
    let c = &mut Checker::new("xen.h + arch-x86");
    check_struct!(c, GuestHandle<EvtchnPort> = guest_handle { p });
    check_struct!(
        c,
        VcpuTimeInfo = vcpu_time_info {
            version,
            pad0,
            tsc_timestamp,
            system_time,
            tsc_to_system_mul,
            tsc_shift,
            flags,
            pad1,
        }
    );
    check_struct!(c, ArchVcpuInfo = arch_vcpu_info { cr2, pad });
    check_struct!(c, VcpuInfo = vcpu_info {
        evtchn_upcall_pending, evtchn_upcall_mask, evtchn_pending_sel, arch, time,
    } pad { _pad0 });
    check_struct!(
        c,
        ArchSharedInfo = arch_shared_info {
            max_pfn,
            pfn_to_mfn_frame_list_list,
            nmi_reason,
            p2m_cr3,
            p2m_vaddr,
            p2m_generation,
        }
    );
    check_struct!(
        c,
        SharedInfo = shared_info {
            vcpu_info,
            evtchn_pending,
            evtchn_mask,
            wc_version,
            wc_sec,
            wc_nsec,
            wc_sec_hi,
            arch,
        }
    );
    check_struct!(c, StartInfoConsoleDomU = start_info_console_domU { mfn, evtchn } pad { _pad0 });
    check_struct!(
        c,
        StartInfoConsoleDom0 = start_info_console_dom0 {
            info_off,
            info_size
        }
    );
    check_union!(c, StartInfoConsole = start_info_console { dom_u => domU, dom0 });
    check_struct!(c, StartInfo = start_info {
        magic, nr_pages, shared_info, flags, store_mfn, store_evtchn, console, pt_base,
        nr_pt_frames, mfn_list, mod_start, mod_len, cmd_line, first_p2m_pfn, nr_p2m_frames,
    } pad { _pad0, _pad1 });

    check_struct!(
        c,
        XenAddToPhysmap = xen_add_to_physmap {
            domid,
            size,
            space,
            idx,
            gpfn
        }
    );
    check_struct!(c, MmuUpdate = mmu_update { ptr, val });
    check_consts!(c, {
        XENMEM_ADD_TO_PHYSMAP = XENMEM_add_to_physmap,
        XENMAPSPACE_SHARED_INFO = XENMAPSPACE_shared_info,
        XENMAPSPACE_GRANT_TABLE = XENMAPSPACE_grant_table,
        MMU_NORMAL_PT_UPDATE = MMU_NORMAL_PT_UPDATE,
        UVMF_INVLPG = UVMF_INVLPG,
    });
    // A 64-bit address: C's long is signed, so compare the bits.
    c.eq(
        "MACH2PHYS_VIRT_START".to_string(),
        MACH2PHYS_VIRT_START as i64 as i128,
        abi_oracle::c_long!("xo_const_", "MACH2PHYS_VIRT_START") as i128,
    );
    check_consts!(c, {
        HYPERVISOR_SET_TRAP_TABLE = __HYPERVISOR_set_trap_table,
        HYPERVISOR_MMU_UPDATE = __HYPERVISOR_mmu_update,
        HYPERVISOR_SET_GDT = __HYPERVISOR_set_gdt,
        HYPERVISOR_STACK_SWITCH = __HYPERVISOR_stack_switch,
        HYPERVISOR_SET_CALLBACKS = __HYPERVISOR_set_callbacks,
        HYPERVISOR_FPU_TASKSWITCH = __HYPERVISOR_fpu_taskswitch,
        HYPERVISOR_SCHED_OP_COMPAT = __HYPERVISOR_sched_op_compat,
        HYPERVISOR_PLATFORM_OP = __HYPERVISOR_platform_op,
        HYPERVISOR_SET_DEBUGREG = __HYPERVISOR_set_debugreg,
        HYPERVISOR_GET_DEBUGREG = __HYPERVISOR_get_debugreg,
        HYPERVISOR_UPDATE_DESCRIPTOR = __HYPERVISOR_update_descriptor,
        HYPERVISOR_MEMORY_OP = __HYPERVISOR_memory_op,
        HYPERVISOR_MULTICALL = __HYPERVISOR_multicall,
        HYPERVISOR_UPDATE_VA_MAPPING = __HYPERVISOR_update_va_mapping,
        HYPERVISOR_SET_TIMER_OP = __HYPERVISOR_set_timer_op,
        HYPERVISOR_EVENT_CHANNEL_OP_COMPAT = __HYPERVISOR_event_channel_op_compat,
        HYPERVISOR_XEN_VERSION = __HYPERVISOR_xen_version,
        HYPERVISOR_CONSOLE_IO = __HYPERVISOR_console_io,
        HYPERVISOR_PHYSDEV_OP_COMPAT = __HYPERVISOR_physdev_op_compat,
        HYPERVISOR_GRANT_TABLE_OP = __HYPERVISOR_grant_table_op,
        HYPERVISOR_VM_ASSIST = __HYPERVISOR_vm_assist,
        HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN = __HYPERVISOR_update_va_mapping_otherdomain,
        HYPERVISOR_IRET = __HYPERVISOR_iret,
        HYPERVISOR_VCPU_OP = __HYPERVISOR_vcpu_op,
        HYPERVISOR_SET_SEGMENT_BASE = __HYPERVISOR_set_segment_base,
        HYPERVISOR_MMUEXT_OP = __HYPERVISOR_mmuext_op,
        HYPERVISOR_XSM_OP = __HYPERVISOR_xsm_op,
        HYPERVISOR_NMI_OP = __HYPERVISOR_nmi_op,
        HYPERVISOR_SCHED_OP = __HYPERVISOR_sched_op,
        HYPERVISOR_CALLBACK_OP = __HYPERVISOR_callback_op,
        HYPERVISOR_XENOPROF_OP = __HYPERVISOR_xenoprof_op,
        HYPERVISOR_EVENT_CHANNEL_OP = __HYPERVISOR_event_channel_op,
        HYPERVISOR_PHYSDEV_OP = __HYPERVISOR_physdev_op,
        HYPERVISOR_HVM_OP = __HYPERVISOR_hvm_op,
        HYPERVISOR_SYSCTL = __HYPERVISOR_sysctl,
        HYPERVISOR_DOMCTL = __HYPERVISOR_domctl,
        HYPERVISOR_KEXEC_OP = __HYPERVISOR_kexec_op,
        HYPERVISOR_TMEM_OP = __HYPERVISOR_tmem_op,
        HYPERVISOR_ARGO_OP = __HYPERVISOR_argo_op,
        HYPERVISOR_XENPMU_OP = __HYPERVISOR_xenpmu_op,
        HYPERVISOR_DM_OP = __HYPERVISOR_dm_op,
        HYPERVISOR_HYPFS_OP = __HYPERVISOR_hypfs_op,
        HYPERVISOR_ARCH_0 = __HYPERVISOR_arch_0,
        HYPERVISOR_ARCH_1 = __HYPERVISOR_arch_1,
        HYPERVISOR_ARCH_2 = __HYPERVISOR_arch_2,
        HYPERVISOR_ARCH_3 = __HYPERVISOR_arch_3,
        HYPERVISOR_ARCH_4 = __HYPERVISOR_arch_4,
        HYPERVISOR_ARCH_5 = __HYPERVISOR_arch_5,
        HYPERVISOR_ARCH_6 = __HYPERVISOR_arch_6,
        HYPERVISOR_ARCH_7 = __HYPERVISOR_arch_7,
        CONSOLEIO_WRITE = CONSOLEIO_write,
        CONSOLEIO_READ = CONSOLEIO_read,
        abi::DOMID_FIRST_RESERVED = DOMID_FIRST_RESERVED,
        abi::DOMID_SELF = DOMID_SELF,
        DOMID_IO = DOMID_IO,
        DOMID_XEN = DOMID_XEN,
        DOMID_COW = DOMID_COW,
        DOMID_INVALID = DOMID_INVALID,
        DOMID_IDLE = DOMID_IDLE,
        DOMID_MASK = DOMID_MASK,
        XEN_LEGACY_MAX_VCPUS = XEN_LEGACY_MAX_VCPUS,
        XEN_PVCLOCK_TSC_STABLE_BIT = XEN_PVCLOCK_TSC_STABLE_BIT,
        XEN_PVCLOCK_GUEST_STOPPED = XEN_PVCLOCK_GUEST_STOPPED,
        MAX_GUEST_CMDLINE = MAX_GUEST_CMDLINE,
        SIF_PRIVILEGED = SIF_PRIVILEGED,
        SIF_INITDOMAIN = SIF_INITDOMAIN,
        SIF_MULTIBOOT_MOD = SIF_MULTIBOOT_MOD,
        SIF_MOD_START_PFN = SIF_MOD_START_PFN,
        SIF_VIRT_P2M_4TOOLS = SIF_VIRT_P2M_4TOOLS,
        SIF_PM_MASK = SIF_PM_MASK,
        EVTCHN_WORDS = EVTCHN_WORDS,
    });
    c.finish();
}

#[test]
fn grant_table_h() {
    let c = &mut Checker::new("grant_table.h");
    check_struct!(
        c,
        GrantEntryV1 = grant_entry_v1 {
            flags,
            domid,
            frame
        }
    );
    check_struct!(c, GrantEntryHeader = grant_entry_header { flags, domid });
    check_struct!(
        c,
        GrantEntryV2FullPage = grant_entry_v2_full_page { hdr, pad0, frame }
    );
    check_struct!(
        c,
        GrantEntryV2SubPage = grant_entry_v2_sub_page {
            hdr,
            page_off,
            length,
            frame,
        }
    );
    check_struct!(
        c,
        GrantEntryV2Transitive = grant_entry_v2_transitive {
            hdr,
            trans_domid,
            pad0,
            gref,
        }
    );
    check_union!(c, GrantEntryV2 = grant_entry_v2 {
        hdr, full_page, sub_page, transitive, spacer => __spacer,
    });
    check_struct!(c, GnttabMapGrantRef = gnttab_map_grant_ref {
        host_addr, flags, ref_ => ref, dom, status, handle, dev_bus_addr,
    });
    check_struct!(c, GnttabUnmapGrantRef = gnttab_unmap_grant_ref {
        host_addr, dev_bus_addr, handle, status,
    } pad { _pad0 });
    check_struct!(c, GnttabSetupTable = gnttab_setup_table {
        dom, nr_frames, status, frame_list,
    } pad { _pad0, _pad1 });
    check_union!(c, GnttabCopyPtrU = gnttab_copy_ptr_u { ref_ => ref, gmfn });
    check_struct!(c, GnttabCopyPtr = gnttab_copy_ptr { u, domid, offset } pad { _pad0 });
    check_struct!(c, GnttabCopy = gnttab_copy { source, dest, len, flags, status } pad { _pad0 });
    check_struct!(c, GnttabQuerySize = gnttab_query_size {
        dom, nr_frames, max_nr_frames, status,
    } pad { _pad0, _pad1 });

    check_consts!(c, {
        GNTTAB_NR_RESERVED_ENTRIES = GNTTAB_NR_RESERVED_ENTRIES,
        GNTTAB_RESERVED_CONSOLE = GNTTAB_RESERVED_CONSOLE,
        GNTTAB_RESERVED_XENSTORE = GNTTAB_RESERVED_XENSTORE,
        GTF_INVALID = GTF_invalid,
        GTF_PERMIT_ACCESS = GTF_permit_access,
        GTF_ACCEPT_TRANSFER = GTF_accept_transfer,
        GTF_TRANSITIVE = GTF_transitive,
        GTF_TYPE_MASK = GTF_type_mask,
        GTF_READONLY = GTF_readonly,
        GTF_READING = GTF_reading,
        GTF_WRITING = GTF_writing,
        GTF_PWT = GTF_PWT,
        GTF_PCD = GTF_PCD,
        GTF_PAT = GTF_PAT,
        GTF_SUB_PAGE = GTF_sub_page,
        GTF_TRANSFER_COMMITTED = GTF_transfer_committed,
        GTF_TRANSFER_COMPLETED = GTF_transfer_completed,
        GNTTABOP_MAP_GRANT_REF = GNTTABOP_map_grant_ref,
        GNTTABOP_UNMAP_GRANT_REF = GNTTABOP_unmap_grant_ref,
        GNTTABOP_SETUP_TABLE = GNTTABOP_setup_table,
        GNTTABOP_DUMP_TABLE = GNTTABOP_dump_table,
        GNTTABOP_TRANSFER = GNTTABOP_transfer,
        GNTTABOP_COPY = GNTTABOP_copy,
        GNTTABOP_QUERY_SIZE = GNTTABOP_query_size,
        GNTTABOP_UNMAP_AND_REPLACE = GNTTABOP_unmap_and_replace,
        GNTTABOP_SET_VERSION = GNTTABOP_set_version,
        GNTTABOP_GET_STATUS_FRAMES = GNTTABOP_get_status_frames,
        GNTTABOP_GET_VERSION = GNTTABOP_get_version,
        GNTTABOP_SWAP_GRANT_REF = GNTTABOP_swap_grant_ref,
        GNTTABOP_CACHE_FLUSH = GNTTABOP_cache_flush,
        GNTCOPY_SOURCE_GREF = GNTCOPY_source_gref,
        GNTCOPY_DEST_GREF = GNTCOPY_dest_gref,
        GNTMAP_DEVICE_MAP = GNTMAP_device_map,
        GNTMAP_HOST_MAP = GNTMAP_host_map,
        GNTMAP_READONLY = GNTMAP_readonly,
        GNTMAP_APPLICATION_MAP = GNTMAP_application_map,
        GNTMAP_CONTAINS_PTE = GNTMAP_contains_pte,
        GNTMAP_GUEST_AVAIL_MASK = GNTMAP_guest_avail_mask,
        GNTST_OKAY = GNTST_okay,
        GNTST_GENERAL_ERROR = GNTST_general_error,
        GNTST_BAD_DOMAIN = GNTST_bad_domain,
        GNTST_BAD_GNTREF = GNTST_bad_gntref,
        GNTST_BAD_HANDLE = GNTST_bad_handle,
        GNTST_BAD_VIRT_ADDR = GNTST_bad_virt_addr,
        GNTST_BAD_DEV_ADDR = GNTST_bad_dev_addr,
        GNTST_NO_DEVICE_SPACE = GNTST_no_device_space,
        GNTST_PERMISSION_DENIED = GNTST_permission_denied,
        GNTST_BAD_PAGE = GNTST_bad_page,
        GNTST_BAD_COPY_ARG = GNTST_bad_copy_arg,
        GNTST_ADDRESS_TOO_BIG = GNTST_address_too_big,
        GNTST_EAGAIN = GNTST_eagain,
        GNTST_NO_SPACE = GNTST_no_space,
    });

    // GNTTABOP_error_msgs: the C initializer, exported as an array of strings.
    extern "C" {
        static xo_gnttab_error_msgs: *const *const core::ffi::c_char;
        static xo_gnttab_error_msgs_len: usize;
    }
    // SAFETY: oracle.c defines both; the array holds `len` string literals.
    let (msgs, len) = unsafe { (xo_gnttab_error_msgs, xo_gnttab_error_msgs_len) };
    c.eq(
        "GNTTABOP_error_msgs: length",
        GNTTABOP_ERROR_MSGS.len() as i128,
        len as i128,
    );
    for (i, rust) in GNTTABOP_ERROR_MSGS.iter().enumerate().take(len) {
        // SAFETY: i < len.
        let s = unsafe { abi_oracle::c_str(*msgs.add(i)) };
        c.eq_str(format!("GNTTABOP_error_msgs[{i}]"), rust, s);
        c.eq_str(
            format!("gntst_message(-{i})"),
            gntst_message(-(i as i16)).unwrap_or(""),
            s,
        );
    }
    c.finish();
}

#[test]
fn event_channel_h() {
    let c = &mut Checker::new("event_channel.h");
    check_struct!(
        c,
        EvtchnAllocUnbound = evtchn_alloc_unbound {
            dom,
            remote_dom,
            port
        }
    );
    check_struct!(c, EvtchnBindInterdomain = evtchn_bind_interdomain {
        remote_dom, remote_port, local_port,
    } pad { _pad0 });
    check_struct!(c, EvtchnClose = evtchn_close { port });
    check_struct!(c, EvtchnSend = evtchn_send { port });
    check_struct!(c, EvtchnUnmask = evtchn_unmask { port });
    check_struct!(c, EvtchnStatusUnbound = evtchn_status_unbound { dom });
    check_struct!(c, EvtchnStatusInterdomain = evtchn_status_interdomain {
        dom, port,
    } pad { _pad0 });
    check_union!(
        c,
        EvtchnStatusU = evtchn_status_u {
            unbound,
            interdomain,
            pirq,
            virq
        }
    );
    check_struct!(c, EvtchnStatus = evtchn_status { dom, port, status, vcpu, u } pad { _pad0 });

    check_consts!(c, {
        EVTCHNOP_BIND_INTERDOMAIN = EVTCHNOP_bind_interdomain,
        EVTCHNOP_BIND_VIRQ = EVTCHNOP_bind_virq,
        EVTCHNOP_BIND_PIRQ = EVTCHNOP_bind_pirq,
        EVTCHNOP_CLOSE = EVTCHNOP_close,
        EVTCHNOP_SEND = EVTCHNOP_send,
        EVTCHNOP_STATUS = EVTCHNOP_status,
        EVTCHNOP_ALLOC_UNBOUND = EVTCHNOP_alloc_unbound,
        EVTCHNOP_BIND_IPI = EVTCHNOP_bind_ipi,
        EVTCHNOP_BIND_VCPU = EVTCHNOP_bind_vcpu,
        EVTCHNOP_UNMASK = EVTCHNOP_unmask,
        EVTCHNOP_RESET = EVTCHNOP_reset,
        EVTCHNOP_INIT_CONTROL = EVTCHNOP_init_control,
        EVTCHNOP_EXPAND_ARRAY = EVTCHNOP_expand_array,
        EVTCHNOP_SET_PRIORITY = EVTCHNOP_set_priority,
        EVTCHNSTAT_CLOSED = EVTCHNSTAT_closed,
        EVTCHNSTAT_UNBOUND = EVTCHNSTAT_unbound,
        EVTCHNSTAT_INTERDOMAIN = EVTCHNSTAT_interdomain,
        EVTCHNSTAT_PIRQ = EVTCHNSTAT_pirq,
        EVTCHNSTAT_VIRQ = EVTCHNSTAT_virq,
        EVTCHNSTAT_IPI = EVTCHNSTAT_ipi,
        EVTCHN_2L_NR_CHANNELS = EVTCHN_2L_NR_CHANNELS,
    });
    c.finish();
}

#[test]
fn sched_h() {
    let c = &mut Checker::new("sched.h");
    check_struct!(c, SchedShutdown = sched_shutdown { reason });
    check_struct!(c, SchedPoll = sched_poll { ports, nr_ports, timeout } pad { _pad0 });
    check_consts!(c, {
        SCHEDOP_YIELD = SCHEDOP_yield,
        SCHEDOP_BLOCK = SCHEDOP_block,
        SCHEDOP_SHUTDOWN = SCHEDOP_shutdown,
        SCHEDOP_POLL = SCHEDOP_poll,
        SCHEDOP_REMOTE_SHUTDOWN = SCHEDOP_remote_shutdown,
        SCHEDOP_SHUTDOWN_CODE = SCHEDOP_shutdown_code,
        SCHEDOP_WATCHDOG = SCHEDOP_watchdog,
        SCHEDOP_PIN_OVERRIDE = SCHEDOP_pin_override,
        SHUTDOWN_POWEROFF = SHUTDOWN_poweroff,
        SHUTDOWN_REBOOT = SHUTDOWN_reboot,
        SHUTDOWN_SUSPEND = SHUTDOWN_suspend,
        SHUTDOWN_CRASH = SHUTDOWN_crash,
        SHUTDOWN_WATCHDOG = SHUTDOWN_watchdog,
        SHUTDOWN_SOFT_RESET = SHUTDOWN_soft_reset,
        SHUTDOWN_MAX = SHUTDOWN_MAX,
    });
    c.finish();
}

#[test]
fn hvm() {
    let c = &mut Checker::new("hvm (start_info.h, hvm_op.h, params.h)");
    check_struct!(
        c,
        HvmStartInfo = hvm_start_info {
            magic,
            version,
            flags,
            nr_modules,
            modlist_paddr,
            cmdline_paddr,
            rsdp_paddr,
            memmap_paddr,
            memmap_entries,
            reserved,
        }
    );
    check_struct!(
        c,
        HvmModlistEntry = hvm_modlist_entry {
            paddr,
            size,
            cmdline_paddr,
            reserved,
        }
    );
    check_struct!(c, HvmMemmapTableEntry = hvm_memmap_table_entry {
        addr, size, type_ => type, reserved,
    });
    check_struct!(
        c,
        XenHvmParam = xen_hvm_param {
            domid,
            pad,
            index,
            value
        }
    );
    check_consts!(c, {
        XEN_HVM_START_MAGIC_VALUE = XEN_HVM_START_MAGIC_VALUE,
        XEN_HVM_MEMMAP_TYPE_RAM = XEN_HVM_MEMMAP_TYPE_RAM,
        XEN_HVM_MEMMAP_TYPE_RESERVED = XEN_HVM_MEMMAP_TYPE_RESERVED,
        XEN_HVM_MEMMAP_TYPE_ACPI = XEN_HVM_MEMMAP_TYPE_ACPI,
        XEN_HVM_MEMMAP_TYPE_NVS = XEN_HVM_MEMMAP_TYPE_NVS,
        XEN_HVM_MEMMAP_TYPE_UNUSABLE = XEN_HVM_MEMMAP_TYPE_UNUSABLE,
        XEN_HVM_MEMMAP_TYPE_DISABLED = XEN_HVM_MEMMAP_TYPE_DISABLED,
        XEN_HVM_MEMMAP_TYPE_PMEM = XEN_HVM_MEMMAP_TYPE_PMEM,
        HVMOP_SET_PARAM = HVMOP_set_param,
        HVMOP_GET_PARAM = HVMOP_get_param,
        HVMOP_FLUSH_TLBS = HVMOP_flush_tlbs,
        HVMOP_PAGETABLE_DYING = HVMOP_pagetable_dying,
        HVMOP_GET_TIME = HVMOP_get_time,
        HVMOP_XENTRACE = HVMOP_xentrace,
        HVMOP_GET_MEM_TYPE = HVMOP_get_mem_type,
        HVMOP_SET_EVTCHN_UPCALL_VECTOR = HVMOP_set_evtchn_upcall_vector,
        HVMOP_GUEST_REQUEST_VM_EVENT = HVMOP_guest_request_vm_event,
        HVMOP_ALTP2M = HVMOP_altp2m,
        HVM_PARAM_CALLBACK_IRQ = HVM_PARAM_CALLBACK_IRQ,
        HVM_PARAM_STORE_PFN = HVM_PARAM_STORE_PFN,
        HVM_PARAM_STORE_EVTCHN = HVM_PARAM_STORE_EVTCHN,
        HVM_PARAM_CONSOLE_PFN = HVM_PARAM_CONSOLE_PFN,
        HVM_PARAM_CONSOLE_EVTCHN = HVM_PARAM_CONSOLE_EVTCHN,
        HVM_NR_PARAMS = HVM_NR_PARAMS,
    });
    c.finish();
}

#[test]
fn xs_wire_h() {
    let c = &mut Checker::new("io/xs_wire.h");
    check_struct!(
        c,
        XenstoreDomainInterface = xenstore_domain_interface {
            req,
            rsp,
            req_cons,
            req_prod,
            rsp_cons,
            rsp_prod,
            server_features,
            connection,
            error,
        }
    );
    check_struct!(c, XsdSockmsg = xsd_sockmsg { type_ => type, req_id, tx_id, len });
    check_consts!(c, {
        XENSTORE_RING_SIZE = XENSTORE_RING_SIZE,
        XENSTORE_PAYLOAD_MAX = XENSTORE_PAYLOAD_MAX,
        XENSTORE_ABS_PATH_MAX = XENSTORE_ABS_PATH_MAX,
        XENSTORE_REL_PATH_MAX = XENSTORE_REL_PATH_MAX,
        XENSTORE_SERVER_FEATURE_RECONNECTION = XENSTORE_SERVER_FEATURE_RECONNECTION,
        XENSTORE_SERVER_FEATURE_ERROR = XENSTORE_SERVER_FEATURE_ERROR,
        XENSTORE_CONNECTED = XENSTORE_CONNECTED,
        XENSTORE_RECONNECT = XENSTORE_RECONNECT,
        XENSTORE_ERROR_NONE = XENSTORE_ERROR_NONE,
        XENSTORE_ERROR_COMM = XENSTORE_ERROR_COMM,
        XENSTORE_ERROR_RINGIDX = XENSTORE_ERROR_RINGIDX,
        XENSTORE_ERROR_PROTO = XENSTORE_ERROR_PROTO,
    });
    // MASK_XENSTORE_IDX(idx) at the indexes oracle.c evaluates it.
    let masks: [(u32, i64); 5] = [
        (0, abi_oracle::c_long!("xo_const_MASK_XENSTORE_IDX_0")),
        (1023, abi_oracle::c_long!("xo_const_MASK_XENSTORE_IDX_1023")),
        (1024, abi_oracle::c_long!("xo_const_MASK_XENSTORE_IDX_1024")),
        (5000, abi_oracle::c_long!("xo_const_MASK_XENSTORE_IDX_5000")),
        (
            u32::MAX,
            abi_oracle::c_long!("xo_const_MASK_XENSTORE_IDX_MAX"),
        ),
    ];
    for (idx, want) in masks {
        c.eq(
            format!("MASK_XENSTORE_IDX({idx})"),
            mask_xenstore_idx(idx) as i128,
            want as i128,
        );
    }
    c.finish();
}

#[test]
fn console_h() {
    let c = &mut Checker::new("io/console.h");
    check_struct!(c, XenconsInterface = xencons_interface {
        in_ => in, out, in_cons, in_prod, out_cons, out_prod,
    });
    check_consts!(c, {
        XENCONS_IN_SIZE = XENCONS_IN_SIZE,
        XENCONS_OUT_SIZE = XENCONS_OUT_SIZE,
    });
    let in_3000 = abi_oracle::c_long!("xo_const_MASK_XENCONS_IDX_IN_3000");
    let out_3000 = abi_oracle::c_long!("xo_const_MASK_XENCONS_IDX_OUT_3000");
    let out_max = abi_oracle::c_long!("xo_const_MASK_XENCONS_IDX_OUT_MAX");
    c.eq(
        "MASK_XENCONS_IDX(3000, in)",
        mask_xencons_in_idx(3000) as i128,
        in_3000 as i128,
    );
    c.eq(
        "MASK_XENCONS_IDX(3000, out)",
        mask_xencons_out_idx(3000) as i128,
        out_3000 as i128,
    );
    c.eq(
        "MASK_XENCONS_IDX(0xffffffff, out)",
        mask_xencons_out_idx(u32::MAX) as i128,
        out_max as i128,
    );
    c.finish();
}
