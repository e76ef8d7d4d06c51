/*
 * ABI oracle: the layout facts of the installed Xen public headers, exported as data symbols
 * that the Rust tests in tests/ compare with xenolith's #[repr(C)] mirrors.
 *
 * Naming (the Rust macros in src/lib.rs build the same names):
 *   xo_size_<tag>, xo_align_<tag>          sizeof / _Alignof of a type
 *   xo_signed_<tag>                        1 if a scalar type is signed
 *   xo_off_<tag>__<field>                  offsetof(type, field)
 *   xo_fsize_<tag>__<field>                sizeof(((type *)0)->field)
 *   xo_const_<NAME>                        a constant, as long
 *   xo_str_<NAME>                          a string constant
 *
 * Built by build.rs with the `cc` crate for x86_64; needs libxen-dev (/usr/include/xen, including
 * the Linux device interfaces in xen/sys/) and linux/ioctl.h (linux-libc-dev).
 */

/* grant_entry_v2 and friends need interface version >= 0x0003020a; use the newest of 4.17. */
#define __XEN_INTERFACE_VERSION__ 0x00040e00

#include <stddef.h>
#include <stdint.h>

/* io/ring.h leaves the barriers to the includer; compiler barriers suffice for layout. */
#define xen_mb()  __asm__ __volatile__("" ::: "memory")
#define xen_rmb() __asm__ __volatile__("" ::: "memory")
#define xen_wmb() __asm__ __volatile__("" ::: "memory")

#include <xen/xen.h>
#include <xen/memory.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/io/ring.h>
#include <xen/io/xs_wire.h>
#include <xen/io/console.h>
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>
/* Linux's Xen device interfaces (xen-platform-linux). They include nothing themselves: _IOC
 * comes from linux/ioctl.h, domid_t from xen.h above, uint32_t from stdint.h. */
#include <linux/ioctl.h>
#include <xen/sys/evtchn.h>
#include <xen/sys/gntdev.h>

#if !defined(__x86_64__)
#error "the ABI oracle describes the x86_64 layout; build it on x86_64"
#endif

#define TYPE(tag, ...)                                   \
    const size_t xo_size_##tag = sizeof(__VA_ARGS__);    \
    const size_t xo_align_##tag = _Alignof(__VA_ARGS__);

/* Pastes `tag` itself (not via TYPE): blkif_vdev_t/blkif_sector_t are macros. */
#define SCALAR(tag, T)                                   \
    const size_t xo_size_##tag = sizeof(T);              \
    const size_t xo_align_##tag = _Alignof(T);           \
    const size_t xo_signed_##tag = ((T)-1 < (T)1);

/* FIELD_AS(tag, type, symbol, member-designator) */
#define FIELD_AS(tag, T, sym, ...)                                      \
    const size_t xo_off_##tag##__##sym = offsetof(T, __VA_ARGS__);     \
    const size_t xo_fsize_##tag##__##sym = sizeof(((T *)0)->__VA_ARGS__);
#define FIELD(tag, T, f) FIELD_AS(tag, T, f, f)

#define CONST(name)          const long xo_const_##name = (long)(name);
#define CONST_AS(name, expr) const long xo_const_##name = (long)(expr);
#define STR(name)            const char *const xo_str_##name = name;

/* ---------------------------------------------------------------- scalar types */
SCALAR(domid_t, domid_t)
SCALAR(grant_ref_t, grant_ref_t)
SCALAR(evtchn_port_t, evtchn_port_t)
SCALAR(xen_pfn_t, xen_pfn_t)
SCALAR(xen_ulong_t, xen_ulong_t)
SCALAR(grant_handle_t, grant_handle_t)
SCALAR(grant_status_t, grant_status_t)
SCALAR(XENSTORE_RING_IDX, XENSTORE_RING_IDX)
SCALAR(XENCONS_RING_IDX, XENCONS_RING_IDX)
SCALAR(RING_IDX, RING_IDX)
SCALAR(blkif_vdev_t, blkif_vdev_t)
SCALAR(blkif_sector_t, blkif_sector_t)

/* ---------------------------------------------------------------- xen.h / arch-x86 */
TYPE(guest_handle, __guest_handle_evtchn_port_t)
FIELD(guest_handle, __guest_handle_evtchn_port_t, p)

#define T struct vcpu_time_info
TYPE(vcpu_time_info, T)
FIELD(vcpu_time_info, T, version)
FIELD(vcpu_time_info, T, pad0)
FIELD(vcpu_time_info, T, tsc_timestamp)
FIELD(vcpu_time_info, T, system_time)
FIELD(vcpu_time_info, T, tsc_to_system_mul)
FIELD(vcpu_time_info, T, tsc_shift)
FIELD(vcpu_time_info, T, flags)
FIELD(vcpu_time_info, T, pad1)
#undef T

#define T struct arch_vcpu_info
TYPE(arch_vcpu_info, T)
FIELD(arch_vcpu_info, T, cr2)
FIELD(arch_vcpu_info, T, pad)
#undef T

#define T struct vcpu_info
TYPE(vcpu_info, T)
FIELD(vcpu_info, T, evtchn_upcall_pending)
FIELD(vcpu_info, T, evtchn_upcall_mask)
FIELD(vcpu_info, T, evtchn_pending_sel)
FIELD(vcpu_info, T, arch)
FIELD(vcpu_info, T, time)
#undef T

#define T struct arch_shared_info
TYPE(arch_shared_info, T)
FIELD(arch_shared_info, T, max_pfn)
FIELD(arch_shared_info, T, pfn_to_mfn_frame_list_list)
FIELD(arch_shared_info, T, nmi_reason)
FIELD(arch_shared_info, T, p2m_cr3)
FIELD(arch_shared_info, T, p2m_vaddr)
FIELD(arch_shared_info, T, p2m_generation)
#undef T

#define T struct shared_info
TYPE(shared_info, T)
FIELD(shared_info, T, vcpu_info)
FIELD(shared_info, T, evtchn_pending)
FIELD(shared_info, T, evtchn_mask)
FIELD(shared_info, T, wc_version)
FIELD(shared_info, T, wc_sec)
FIELD(shared_info, T, wc_nsec)
FIELD(shared_info, T, wc_sec_hi)
FIELD(shared_info, T, arch)
#undef T

#define T __typeof__(((struct start_info *)0)->console.domU)
TYPE(start_info_console_domU, T)
FIELD(start_info_console_domU, T, mfn)
FIELD(start_info_console_domU, T, evtchn)
#undef T

#define T __typeof__(((struct start_info *)0)->console.dom0)
TYPE(start_info_console_dom0, T)
FIELD(start_info_console_dom0, T, info_off)
FIELD(start_info_console_dom0, T, info_size)
#undef T

#define T __typeof__(((struct start_info *)0)->console)
TYPE(start_info_console, T)
FIELD(start_info_console, T, domU)
FIELD(start_info_console, T, dom0)
#undef T

#define T struct start_info
TYPE(start_info, T)
FIELD(start_info, T, magic)
FIELD(start_info, T, nr_pages)
FIELD(start_info, T, shared_info)
FIELD(start_info, T, flags)
FIELD(start_info, T, store_mfn)
FIELD(start_info, T, store_evtchn)
FIELD(start_info, T, console)
FIELD(start_info, T, pt_base)
FIELD(start_info, T, nr_pt_frames)
FIELD(start_info, T, mfn_list)
FIELD(start_info, T, mod_start)
FIELD(start_info, T, mod_len)
FIELD(start_info, T, cmd_line)
FIELD(start_info, T, first_p2m_pfn)
FIELD(start_info, T, nr_p2m_frames)
#undef T

#define T struct xen_add_to_physmap
TYPE(xen_add_to_physmap, T)
FIELD(xen_add_to_physmap, T, domid)
FIELD(xen_add_to_physmap, T, size)
FIELD(xen_add_to_physmap, T, space)
FIELD(xen_add_to_physmap, T, idx)
FIELD(xen_add_to_physmap, T, gpfn)
#undef T

#define T struct mmu_update
TYPE(mmu_update, T)
FIELD(mmu_update, T, ptr)
FIELD(mmu_update, T, val)
#undef T

CONST(XENMEM_add_to_physmap)
CONST(XENMAPSPACE_shared_info)
CONST(XENMAPSPACE_grant_table)
CONST(MMU_NORMAL_PT_UPDATE)
CONST(UVMF_INVLPG)
CONST_AS(MACH2PHYS_VIRT_START, (long)MACH2PHYS_VIRT_START)

CONST(__HYPERVISOR_set_trap_table)
CONST(__HYPERVISOR_mmu_update)
CONST(__HYPERVISOR_set_gdt)
CONST(__HYPERVISOR_stack_switch)
CONST(__HYPERVISOR_set_callbacks)
CONST(__HYPERVISOR_fpu_taskswitch)
CONST(__HYPERVISOR_sched_op_compat)
CONST(__HYPERVISOR_platform_op)
CONST(__HYPERVISOR_set_debugreg)
CONST(__HYPERVISOR_get_debugreg)
CONST(__HYPERVISOR_update_descriptor)
CONST(__HYPERVISOR_memory_op)
CONST(__HYPERVISOR_multicall)
CONST(__HYPERVISOR_update_va_mapping)
CONST(__HYPERVISOR_set_timer_op)
CONST(__HYPERVISOR_event_channel_op_compat)
CONST(__HYPERVISOR_xen_version)
CONST(__HYPERVISOR_console_io)
CONST(__HYPERVISOR_physdev_op_compat)
CONST(__HYPERVISOR_grant_table_op)
CONST(__HYPERVISOR_vm_assist)
CONST(__HYPERVISOR_update_va_mapping_otherdomain)
CONST(__HYPERVISOR_iret)
CONST(__HYPERVISOR_vcpu_op)
CONST(__HYPERVISOR_set_segment_base)
CONST(__HYPERVISOR_mmuext_op)
CONST(__HYPERVISOR_xsm_op)
CONST(__HYPERVISOR_nmi_op)
CONST(__HYPERVISOR_sched_op)
CONST(__HYPERVISOR_callback_op)
CONST(__HYPERVISOR_xenoprof_op)
CONST(__HYPERVISOR_event_channel_op)
CONST(__HYPERVISOR_physdev_op)
CONST(__HYPERVISOR_hvm_op)
CONST(__HYPERVISOR_sysctl)
CONST(__HYPERVISOR_domctl)
CONST(__HYPERVISOR_kexec_op)
CONST(__HYPERVISOR_tmem_op)
CONST(__HYPERVISOR_argo_op)
CONST(__HYPERVISOR_xenpmu_op)
CONST(__HYPERVISOR_dm_op)
CONST(__HYPERVISOR_hypfs_op)
CONST(__HYPERVISOR_arch_0)
CONST(__HYPERVISOR_arch_1)
CONST(__HYPERVISOR_arch_2)
CONST(__HYPERVISOR_arch_3)
CONST(__HYPERVISOR_arch_4)
CONST(__HYPERVISOR_arch_5)
CONST(__HYPERVISOR_arch_6)
CONST(__HYPERVISOR_arch_7)
CONST(CONSOLEIO_write)
CONST(CONSOLEIO_read)
CONST(DOMID_FIRST_RESERVED)
CONST(DOMID_SELF)
CONST(DOMID_IO)
CONST(DOMID_XEN)
CONST(DOMID_COW)
CONST(DOMID_INVALID)
CONST(DOMID_IDLE)
CONST(DOMID_MASK)
CONST(XEN_LEGACY_MAX_VCPUS)
CONST(XEN_PVCLOCK_TSC_STABLE_BIT)
CONST(XEN_PVCLOCK_GUEST_STOPPED)
CONST(MAX_GUEST_CMDLINE)
CONST(SIF_PRIVILEGED)
CONST(SIF_INITDOMAIN)
CONST(SIF_MULTIBOOT_MOD)
CONST(SIF_MOD_START_PFN)
CONST(SIF_VIRT_P2M_4TOOLS)
CONST(SIF_PM_MASK)
/* Not a macro: the array length of shared_info.evtchn_pending. */
CONST_AS(EVTCHN_WORDS,
         sizeof(((struct shared_info *)0)->evtchn_pending) / sizeof(xen_ulong_t))

/* ---------------------------------------------------------------- grant_table.h */
#define T struct grant_entry_v1
TYPE(grant_entry_v1, T)
FIELD(grant_entry_v1, T, flags)
FIELD(grant_entry_v1, T, domid)
FIELD(grant_entry_v1, T, frame)
#undef T

#define T struct grant_entry_header
TYPE(grant_entry_header, T)
FIELD(grant_entry_header, T, flags)
FIELD(grant_entry_header, T, domid)
#undef T

#define T __typeof__(((union grant_entry_v2 *)0)->full_page)
TYPE(grant_entry_v2_full_page, T)
FIELD(grant_entry_v2_full_page, T, hdr)
FIELD(grant_entry_v2_full_page, T, pad0)
FIELD(grant_entry_v2_full_page, T, frame)
#undef T

#define T __typeof__(((union grant_entry_v2 *)0)->sub_page)
TYPE(grant_entry_v2_sub_page, T)
FIELD(grant_entry_v2_sub_page, T, hdr)
FIELD(grant_entry_v2_sub_page, T, page_off)
FIELD(grant_entry_v2_sub_page, T, length)
FIELD(grant_entry_v2_sub_page, T, frame)
#undef T

#define T __typeof__(((union grant_entry_v2 *)0)->transitive)
TYPE(grant_entry_v2_transitive, T)
FIELD(grant_entry_v2_transitive, T, hdr)
FIELD(grant_entry_v2_transitive, T, trans_domid)
FIELD(grant_entry_v2_transitive, T, pad0)
FIELD(grant_entry_v2_transitive, T, gref)
#undef T

#define T union grant_entry_v2
TYPE(grant_entry_v2, T)
FIELD(grant_entry_v2, T, hdr)
FIELD(grant_entry_v2, T, full_page)
FIELD(grant_entry_v2, T, sub_page)
FIELD(grant_entry_v2, T, transitive)
FIELD(grant_entry_v2, T, __spacer)
#undef T

#define T struct gnttab_map_grant_ref
TYPE(gnttab_map_grant_ref, T)
FIELD(gnttab_map_grant_ref, T, host_addr)
FIELD(gnttab_map_grant_ref, T, flags)
FIELD(gnttab_map_grant_ref, T, ref)
FIELD(gnttab_map_grant_ref, T, dom)
FIELD(gnttab_map_grant_ref, T, status)
FIELD(gnttab_map_grant_ref, T, handle)
FIELD(gnttab_map_grant_ref, T, dev_bus_addr)
#undef T

#define T struct gnttab_unmap_grant_ref
TYPE(gnttab_unmap_grant_ref, T)
FIELD(gnttab_unmap_grant_ref, T, host_addr)
FIELD(gnttab_unmap_grant_ref, T, dev_bus_addr)
FIELD(gnttab_unmap_grant_ref, T, handle)
FIELD(gnttab_unmap_grant_ref, T, status)
#undef T

#define T struct gnttab_setup_table
TYPE(gnttab_setup_table, T)
FIELD(gnttab_setup_table, T, dom)
FIELD(gnttab_setup_table, T, nr_frames)
FIELD(gnttab_setup_table, T, status)
FIELD(gnttab_setup_table, T, frame_list)
#undef T

#define T __typeof__(((struct gnttab_copy_ptr *)0)->u)
TYPE(gnttab_copy_ptr_u, T)
FIELD(gnttab_copy_ptr_u, T, ref)
FIELD(gnttab_copy_ptr_u, T, gmfn)
#undef T

#define T struct gnttab_copy_ptr
TYPE(gnttab_copy_ptr, T)
FIELD(gnttab_copy_ptr, T, u)
FIELD(gnttab_copy_ptr, T, domid)
FIELD(gnttab_copy_ptr, T, offset)
#undef T

#define T struct gnttab_copy
TYPE(gnttab_copy, T)
FIELD(gnttab_copy, T, source)
FIELD(gnttab_copy, T, dest)
FIELD(gnttab_copy, T, len)
FIELD(gnttab_copy, T, flags)
FIELD(gnttab_copy, T, status)
#undef T

#define T struct gnttab_query_size
TYPE(gnttab_query_size, T)
FIELD(gnttab_query_size, T, dom)
FIELD(gnttab_query_size, T, nr_frames)
FIELD(gnttab_query_size, T, max_nr_frames)
FIELD(gnttab_query_size, T, status)
#undef T

CONST(GNTTAB_NR_RESERVED_ENTRIES)
CONST(GNTTAB_RESERVED_CONSOLE)
CONST(GNTTAB_RESERVED_XENSTORE)
CONST(GTF_invalid)
CONST(GTF_permit_access)
CONST(GTF_accept_transfer)
CONST(GTF_transitive)
CONST(GTF_type_mask)
CONST(GTF_readonly)
CONST(GTF_reading)
CONST(GTF_writing)
CONST(GTF_PWT)
CONST(GTF_PCD)
CONST(GTF_PAT)
CONST(GTF_sub_page)
CONST(GTF_transfer_committed)
CONST(GTF_transfer_completed)
CONST(GNTTABOP_map_grant_ref)
CONST(GNTTABOP_unmap_grant_ref)
CONST(GNTTABOP_setup_table)
CONST(GNTTABOP_dump_table)
CONST(GNTTABOP_transfer)
CONST(GNTTABOP_copy)
CONST(GNTTABOP_query_size)
CONST(GNTTABOP_unmap_and_replace)
CONST(GNTTABOP_set_version)
CONST(GNTTABOP_get_status_frames)
CONST(GNTTABOP_get_version)
CONST(GNTTABOP_swap_grant_ref)
CONST(GNTTABOP_cache_flush)
CONST(GNTCOPY_source_gref)
CONST(GNTCOPY_dest_gref)
CONST(GNTMAP_device_map)
CONST(GNTMAP_host_map)
CONST(GNTMAP_readonly)
CONST(GNTMAP_application_map)
CONST(GNTMAP_contains_pte)
CONST(GNTMAP_guest_avail_mask)
CONST(GNTST_okay)
CONST(GNTST_general_error)
CONST(GNTST_bad_domain)
CONST(GNTST_bad_gntref)
CONST(GNTST_bad_handle)
CONST(GNTST_bad_virt_addr)
CONST(GNTST_bad_dev_addr)
CONST(GNTST_no_device_space)
CONST(GNTST_permission_denied)
CONST(GNTST_bad_page)
CONST(GNTST_bad_copy_arg)
CONST(GNTST_address_too_big)
CONST(GNTST_eagain)
CONST(GNTST_no_space)

static const char *const gnttab_error_msgs[] = GNTTABOP_error_msgs;
const char *const *const xo_gnttab_error_msgs = gnttab_error_msgs;
const size_t xo_gnttab_error_msgs_len = sizeof(gnttab_error_msgs) / sizeof(gnttab_error_msgs[0]);

/* ---------------------------------------------------------------- event_channel.h */
#define T struct evtchn_alloc_unbound
TYPE(evtchn_alloc_unbound, T)
FIELD(evtchn_alloc_unbound, T, dom)
FIELD(evtchn_alloc_unbound, T, remote_dom)
FIELD(evtchn_alloc_unbound, T, port)
#undef T

#define T struct evtchn_bind_interdomain
TYPE(evtchn_bind_interdomain, T)
FIELD(evtchn_bind_interdomain, T, remote_dom)
FIELD(evtchn_bind_interdomain, T, remote_port)
FIELD(evtchn_bind_interdomain, T, local_port)
#undef T

#define T struct evtchn_close
TYPE(evtchn_close, T)
FIELD(evtchn_close, T, port)
#undef T

#define T struct evtchn_send
TYPE(evtchn_send, T)
FIELD(evtchn_send, T, port)
#undef T

#define T struct evtchn_unmask
TYPE(evtchn_unmask, T)
FIELD(evtchn_unmask, T, port)
#undef T

#define T __typeof__(((struct evtchn_status *)0)->u.unbound)
TYPE(evtchn_status_unbound, T)
FIELD(evtchn_status_unbound, T, dom)
#undef T

#define T __typeof__(((struct evtchn_status *)0)->u.interdomain)
TYPE(evtchn_status_interdomain, T)
FIELD(evtchn_status_interdomain, T, dom)
FIELD(evtchn_status_interdomain, T, port)
#undef T

#define T __typeof__(((struct evtchn_status *)0)->u)
TYPE(evtchn_status_u, T)
FIELD(evtchn_status_u, T, unbound)
FIELD(evtchn_status_u, T, interdomain)
FIELD(evtchn_status_u, T, pirq)
FIELD(evtchn_status_u, T, virq)
#undef T

#define T struct evtchn_status
TYPE(evtchn_status, T)
FIELD(evtchn_status, T, dom)
FIELD(evtchn_status, T, port)
FIELD(evtchn_status, T, status)
FIELD(evtchn_status, T, vcpu)
FIELD(evtchn_status, T, u)
#undef T

CONST(EVTCHNOP_bind_interdomain)
CONST(EVTCHNOP_bind_virq)
CONST(EVTCHNOP_bind_pirq)
CONST(EVTCHNOP_close)
CONST(EVTCHNOP_send)
CONST(EVTCHNOP_status)
CONST(EVTCHNOP_alloc_unbound)
CONST(EVTCHNOP_bind_ipi)
CONST(EVTCHNOP_bind_vcpu)
CONST(EVTCHNOP_unmask)
CONST(EVTCHNOP_reset)
CONST(EVTCHNOP_init_control)
CONST(EVTCHNOP_expand_array)
CONST(EVTCHNOP_set_priority)
CONST(EVTCHNSTAT_closed)
CONST(EVTCHNSTAT_unbound)
CONST(EVTCHNSTAT_interdomain)
CONST(EVTCHNSTAT_pirq)
CONST(EVTCHNSTAT_virq)
CONST(EVTCHNSTAT_ipi)
CONST(EVTCHN_2L_NR_CHANNELS)

/* ---------------------------------------------------------------- sched.h */
#define T struct sched_shutdown
TYPE(sched_shutdown, T)
FIELD(sched_shutdown, T, reason)
#undef T

#define T struct sched_poll
TYPE(sched_poll, T)
FIELD(sched_poll, T, ports)
FIELD(sched_poll, T, nr_ports)
FIELD(sched_poll, T, timeout)
#undef T

CONST(SCHEDOP_yield)
CONST(SCHEDOP_block)
CONST(SCHEDOP_shutdown)
CONST(SCHEDOP_poll)
CONST(SCHEDOP_remote_shutdown)
CONST(SCHEDOP_shutdown_code)
CONST(SCHEDOP_watchdog)
CONST(SCHEDOP_pin_override)
CONST(SHUTDOWN_poweroff)
CONST(SHUTDOWN_reboot)
CONST(SHUTDOWN_suspend)
CONST(SHUTDOWN_crash)
CONST(SHUTDOWN_watchdog)
CONST(SHUTDOWN_soft_reset)
CONST(SHUTDOWN_MAX)

/* ---------------------------------------------------------------- hvm */
#define T struct hvm_start_info
TYPE(hvm_start_info, T)
FIELD(hvm_start_info, T, magic)
FIELD(hvm_start_info, T, version)
FIELD(hvm_start_info, T, flags)
FIELD(hvm_start_info, T, nr_modules)
FIELD(hvm_start_info, T, modlist_paddr)
FIELD(hvm_start_info, T, cmdline_paddr)
FIELD(hvm_start_info, T, rsdp_paddr)
FIELD(hvm_start_info, T, memmap_paddr)
FIELD(hvm_start_info, T, memmap_entries)
FIELD(hvm_start_info, T, reserved)
#undef T

#define T struct hvm_modlist_entry
TYPE(hvm_modlist_entry, T)
FIELD(hvm_modlist_entry, T, paddr)
FIELD(hvm_modlist_entry, T, size)
FIELD(hvm_modlist_entry, T, cmdline_paddr)
FIELD(hvm_modlist_entry, T, reserved)
#undef T

#define T struct hvm_memmap_table_entry
TYPE(hvm_memmap_table_entry, T)
FIELD(hvm_memmap_table_entry, T, addr)
FIELD(hvm_memmap_table_entry, T, size)
FIELD(hvm_memmap_table_entry, T, type)
FIELD(hvm_memmap_table_entry, T, reserved)
#undef T

#define T struct xen_hvm_param
TYPE(xen_hvm_param, T)
FIELD(xen_hvm_param, T, domid)
FIELD(xen_hvm_param, T, pad)
FIELD(xen_hvm_param, T, index)
FIELD(xen_hvm_param, T, value)
#undef T

CONST(XEN_HVM_START_MAGIC_VALUE)
CONST(XEN_HVM_MEMMAP_TYPE_RAM)
CONST(XEN_HVM_MEMMAP_TYPE_RESERVED)
CONST(XEN_HVM_MEMMAP_TYPE_ACPI)
CONST(XEN_HVM_MEMMAP_TYPE_NVS)
CONST(XEN_HVM_MEMMAP_TYPE_UNUSABLE)
CONST(XEN_HVM_MEMMAP_TYPE_DISABLED)
CONST(XEN_HVM_MEMMAP_TYPE_PMEM)
CONST(HVMOP_set_param)
CONST(HVMOP_get_param)
CONST(HVMOP_flush_tlbs)
CONST(HVMOP_pagetable_dying)
CONST(HVMOP_get_time)
CONST(HVMOP_xentrace)
CONST(HVMOP_get_mem_type)
CONST(HVMOP_set_evtchn_upcall_vector)
CONST(HVMOP_guest_request_vm_event)
CONST(HVMOP_altp2m)
CONST(HVM_PARAM_CALLBACK_IRQ)
CONST(HVM_PARAM_STORE_PFN)
CONST(HVM_PARAM_STORE_EVTCHN)
CONST(HVM_PARAM_CONSOLE_PFN)
CONST(HVM_PARAM_CONSOLE_EVTCHN)
CONST(HVM_NR_PARAMS)

/* ---------------------------------------------------------------- io/xs_wire.h */
#define T struct xenstore_domain_interface
TYPE(xenstore_domain_interface, T)
FIELD(xenstore_domain_interface, T, req)
FIELD(xenstore_domain_interface, T, rsp)
FIELD(xenstore_domain_interface, T, req_cons)
FIELD(xenstore_domain_interface, T, req_prod)
FIELD(xenstore_domain_interface, T, rsp_cons)
FIELD(xenstore_domain_interface, T, rsp_prod)
FIELD(xenstore_domain_interface, T, server_features)
FIELD(xenstore_domain_interface, T, connection)
FIELD(xenstore_domain_interface, T, error)
#undef T

#define T struct xsd_sockmsg
TYPE(xsd_sockmsg, T)
FIELD(xsd_sockmsg, T, type)
FIELD(xsd_sockmsg, T, req_id)
FIELD(xsd_sockmsg, T, tx_id)
FIELD(xsd_sockmsg, T, len)
#undef T

CONST(XENSTORE_RING_SIZE)
CONST(XENSTORE_PAYLOAD_MAX)
CONST(XENSTORE_ABS_PATH_MAX)
CONST(XENSTORE_REL_PATH_MAX)
CONST(XENSTORE_SERVER_FEATURE_RECONNECTION)
CONST(XENSTORE_SERVER_FEATURE_ERROR)
CONST(XENSTORE_CONNECTED)
CONST(XENSTORE_RECONNECT)
CONST(XENSTORE_ERROR_NONE)
CONST(XENSTORE_ERROR_COMM)
CONST(XENSTORE_ERROR_RINGIDX)
CONST(XENSTORE_ERROR_PROTO)
/* MASK_XENSTORE_IDX at a few indexes (including wrap-around of the 32-bit index). */
CONST_AS(MASK_XENSTORE_IDX_0, MASK_XENSTORE_IDX(0u))
CONST_AS(MASK_XENSTORE_IDX_1023, MASK_XENSTORE_IDX(1023u))
CONST_AS(MASK_XENSTORE_IDX_1024, MASK_XENSTORE_IDX(1024u))
CONST_AS(MASK_XENSTORE_IDX_5000, MASK_XENSTORE_IDX(5000u))
CONST_AS(MASK_XENSTORE_IDX_MAX, MASK_XENSTORE_IDX(0xffffffffu))

/* ---------------------------------------------------------------- io/console.h */
#define T struct xencons_interface
TYPE(xencons_interface, T)
FIELD(xencons_interface, T, in)
FIELD(xencons_interface, T, out)
FIELD(xencons_interface, T, in_cons)
FIELD(xencons_interface, T, in_prod)
FIELD(xencons_interface, T, out_cons)
FIELD(xencons_interface, T, out_prod)
#undef T

CONST_AS(XENCONS_IN_SIZE, sizeof(((struct xencons_interface *)0)->in))
CONST_AS(XENCONS_OUT_SIZE, sizeof(((struct xencons_interface *)0)->out))
CONST_AS(MASK_XENCONS_IDX_IN_3000,
         MASK_XENCONS_IDX(3000u, ((struct xencons_interface *)0)->in))
CONST_AS(MASK_XENCONS_IDX_OUT_3000,
         MASK_XENCONS_IDX(3000u, ((struct xencons_interface *)0)->out))
CONST_AS(MASK_XENCONS_IDX_OUT_MAX,
         MASK_XENCONS_IDX(0xffffffffu, ((struct xencons_interface *)0)->out))

/* ---------------------------------------------------------------- io/blkif.h */
#define T struct blkif_request_segment
TYPE(blkif_request_segment, T)
FIELD(blkif_request_segment, T, gref)
FIELD(blkif_request_segment, T, first_sect)
FIELD(blkif_request_segment, T, last_sect)
#undef T

#define T struct blkif_request
TYPE(blkif_request, T)
FIELD(blkif_request, T, operation)
FIELD(blkif_request, T, nr_segments)
FIELD(blkif_request, T, handle)
FIELD(blkif_request, T, id)
FIELD(blkif_request, T, sector_number)
FIELD(blkif_request, T, seg)
#undef T

#define T struct blkif_request_discard
TYPE(blkif_request_discard, T)
FIELD(blkif_request_discard, T, operation)
FIELD(blkif_request_discard, T, flag)
FIELD(blkif_request_discard, T, handle)
FIELD(blkif_request_discard, T, id)
FIELD(blkif_request_discard, T, sector_number)
FIELD(blkif_request_discard, T, nr_sectors)
#undef T

#define T struct blkif_request_indirect
TYPE(blkif_request_indirect, T)
FIELD(blkif_request_indirect, T, operation)
FIELD(blkif_request_indirect, T, indirect_op)
FIELD(blkif_request_indirect, T, nr_segments)
FIELD(blkif_request_indirect, T, id)
FIELD(blkif_request_indirect, T, sector_number)
FIELD(blkif_request_indirect, T, handle)
FIELD(blkif_request_indirect, T, indirect_grefs)
#undef T

#define T struct blkif_response
TYPE(blkif_response, T)
FIELD(blkif_response, T, id)
FIELD(blkif_response, T, operation)
FIELD(blkif_response, T, status)
#undef T

CONST(BLKIF_OP_READ)
CONST(BLKIF_OP_WRITE)
CONST(BLKIF_OP_WRITE_BARRIER)
CONST(BLKIF_OP_FLUSH_DISKCACHE)
CONST(BLKIF_OP_RESERVED_1)
CONST(BLKIF_OP_DISCARD)
CONST(BLKIF_OP_INDIRECT)
CONST(BLKIF_MAX_SEGMENTS_PER_REQUEST)
CONST(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
CONST(BLKIF_DISCARD_SECURE)
CONST(BLKIF_RSP_EOPNOTSUPP)
CONST(BLKIF_RSP_ERROR)
CONST(BLKIF_RSP_OKAY)
CONST(VDISK_CDROM)
CONST(VDISK_REMOVABLE)
CONST(VDISK_READONLY)
/* Not macros of blkif.h: the formula of its BLKIF_OP_INDIRECT comment, with 4 KiB pages. */
CONST_AS(SEGS_PER_INDIRECT_FRAME, 4096 / sizeof(struct blkif_request_segment))
CONST_AS(BLKIF_MAX_INDIRECT_SEGMENTS,
         BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * (4096 / sizeof(struct blkif_request_segment)))

STR(XEN_IO_PROTO_ABI_X86_32)
STR(XEN_IO_PROTO_ABI_X86_64)
STR(XEN_IO_PROTO_ABI_ARM)
STR(XEN_IO_PROTO_ABI_NATIVE)

/* ---------------------------------------------------------------- io/ring.h, blkif ring */
#define T struct blkif_sring
FIELD(blkif_sring, T, req_prod)
FIELD(blkif_sring, T, req_event)
FIELD(blkif_sring, T, rsp_prod)
FIELD(blkif_sring, T, rsp_event)
FIELD(blkif_sring, T, pvt)
FIELD(blkif_sring, T, __pad)
FIELD(blkif_sring, T, ring)
#undef T
const size_t xo_blkif_sring_entry_size = sizeof(union blkif_sring_entry);
const size_t xo_blkif_sring_entry_align = _Alignof(union blkif_sring_entry);
const size_t xo_blkif_ring_size_1 = __CONST_RING_SIZE(blkif, 4096 * 1);
const size_t xo_blkif_ring_size_2 = __CONST_RING_SIZE(blkif, 4096 * 2);
const size_t xo_blkif_ring_size_4 = __CONST_RING_SIZE(blkif, 4096 * 4);
const size_t xo_blkif_ring_size_8 = __CONST_RING_SIZE(blkif, 4096 * 8);
const size_t xo_blkif_ring_size_16 = __CONST_RING_SIZE(blkif, 4096 * 16);

/* ---------------------------------------------------------------- Linux: asm-generic/ioctl.h */
CONST(_IOC_NRBITS)
CONST(_IOC_TYPEBITS)
CONST(_IOC_SIZEBITS)
CONST(_IOC_DIRBITS)
CONST(_IOC_NRSHIFT)
CONST(_IOC_TYPESHIFT)
CONST(_IOC_SIZESHIFT)
CONST(_IOC_DIRSHIFT)
CONST(_IOC_NONE)
CONST(_IOC_WRITE)
CONST(_IOC_READ)
/* Samples of the encoding with every field non-zero (xen-platform-linux's `ioc`). */
CONST_AS(IOC_SAMPLE_IOWR, _IOC(_IOC_READ | _IOC_WRITE, 'x', 0xff, 0x3fff))
CONST_AS(IOC_SAMPLE_IOR, _IOC(_IOC_READ, 0x12, 114, 8))
CONST_AS(IOC_SAMPLE_IOW, _IOC(_IOC_WRITE, 'f', 2, 8))

/* ---------------------------------------------------------------- Linux: xen/sys/evtchn.h */
#define T struct ioctl_evtchn_bind_interdomain
TYPE(ioctl_evtchn_bind_interdomain, T)
FIELD(ioctl_evtchn_bind_interdomain, T, remote_domain)
FIELD(ioctl_evtchn_bind_interdomain, T, remote_port)
#undef T

#define T struct ioctl_evtchn_bind_unbound_port
TYPE(ioctl_evtchn_bind_unbound_port, T)
FIELD(ioctl_evtchn_bind_unbound_port, T, remote_domain)
#undef T

#define T struct ioctl_evtchn_unbind
TYPE(ioctl_evtchn_unbind, T)
FIELD(ioctl_evtchn_unbind, T, port)
#undef T

#define T struct ioctl_evtchn_notify
TYPE(ioctl_evtchn_notify, T)
FIELD(ioctl_evtchn_notify, T, port)
#undef T

CONST(IOCTL_EVTCHN_BIND_INTERDOMAIN)
CONST(IOCTL_EVTCHN_BIND_UNBOUND_PORT)
CONST(IOCTL_EVTCHN_UNBIND)
CONST(IOCTL_EVTCHN_NOTIFY)
CONST(IOCTL_EVTCHN_RESET)

/* ---------------------------------------------------------------- Linux: xen/sys/gntdev.h */
#define T struct ioctl_gntdev_grant_ref
TYPE(ioctl_gntdev_grant_ref, T)
FIELD(ioctl_gntdev_grant_ref, T, domid)
FIELD(ioctl_gntdev_grant_ref, T, ref)
#undef T

#define T struct ioctl_gntdev_map_grant_ref
TYPE(ioctl_gntdev_map_grant_ref, T)
FIELD(ioctl_gntdev_map_grant_ref, T, count)
FIELD(ioctl_gntdev_map_grant_ref, T, pad)
FIELD(ioctl_gntdev_map_grant_ref, T, index)
FIELD(ioctl_gntdev_map_grant_ref, T, refs)
#undef T

#define T struct ioctl_gntdev_unmap_grant_ref
TYPE(ioctl_gntdev_unmap_grant_ref, T)
FIELD(ioctl_gntdev_unmap_grant_ref, T, index)
FIELD(ioctl_gntdev_unmap_grant_ref, T, count)
FIELD(ioctl_gntdev_unmap_grant_ref, T, pad)
#undef T

/* The anonymous union type of ioctl_gntdev_grant_copy_segment's `source` and `dest`. */
#define T __typeof__(((struct ioctl_gntdev_grant_copy_segment *)0)->source)
TYPE(gntdev_copy_ptr, T)
FIELD(gntdev_copy_ptr, T, virt)
FIELD(gntdev_copy_ptr, T, foreign)
#undef T

#define T __typeof__(((struct ioctl_gntdev_grant_copy_segment *)0)->source.foreign)
TYPE(gntdev_copy_foreign, T)
FIELD(gntdev_copy_foreign, T, ref)
FIELD(gntdev_copy_foreign, T, offset)
FIELD(gntdev_copy_foreign, T, domid)
#undef T

#define T struct ioctl_gntdev_grant_copy_segment
TYPE(ioctl_gntdev_grant_copy_segment, T)
FIELD(ioctl_gntdev_grant_copy_segment, T, source)
FIELD(ioctl_gntdev_grant_copy_segment, T, dest)
FIELD(ioctl_gntdev_grant_copy_segment, T, len)
FIELD(ioctl_gntdev_grant_copy_segment, T, flags)
FIELD(ioctl_gntdev_grant_copy_segment, T, status)
#undef T
/* `dest` is of the same union type as `source`. */
const size_t xo_gntdev_dest_is_source_type =
    __builtin_types_compatible_p(
        __typeof__(((struct ioctl_gntdev_grant_copy_segment *)0)->source),
        __typeof__(((struct ioctl_gntdev_grant_copy_segment *)0)->dest));

#define T struct ioctl_gntdev_grant_copy
TYPE(ioctl_gntdev_grant_copy, T)
FIELD(ioctl_gntdev_grant_copy, T, count)
FIELD(ioctl_gntdev_grant_copy, T, segments)
#undef T

CONST(IOCTL_GNTDEV_MAP_GRANT_REF)
CONST(IOCTL_GNTDEV_UNMAP_GRANT_REF)
CONST(IOCTL_GNTDEV_GRANT_COPY)
