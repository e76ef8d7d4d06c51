/* PVH boot entry of xenolith images (AT&T syntax; included by boot.rs with global_asm!).
 *
 * Facts from the headers (/usr/include/xen):
 * - arch-x86/hvm/start_info.h: "the domain starts in 32bit protected mode with paging
 *   disabled", ebx holds the physical address of struct hvm_start_info, cs is a flat 32-bit
 *   code segment, ds/es/ss flat data segments, cr0.PE set, cr4 and EFLAGS.IF clear.
 * - elfnote.h: XEN_ELFNOTE_PHYS32_ENTRY (18) names this 32-bit entry; notes are
 *   (namesz, descsz, type, "Xen\0", desc) padded to 4 bytes.
 *
 * The entry maps 0-4 GiB identity with 2 MiB pages (the console and xenstore pages sit just
 * under 4 GiB: IMAGES.md), enables PAE + long mode + paging and SSE, loads a 64-bit GDT,
 * switches to the boot stack and calls xen_rt_pvh_start(start_info_paddr). Interrupts stay
 * off for good: no IDT, upcalls masked, events are waited for with SCHEDOP_poll.
 */

    .section .text.boot, "ax"
    .code32
    .globl xen_pvh_start
xen_pvh_start:
    cli
    cld
    mov %ebx, %esi                  /* hvm_start_info paddr, kept in esi */

    /* Zero .bss (page tables, stack, statics). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* 4 page directories: 2048 entries of 2 MiB, P | RW | PS (0x83). */
    mov $xen_rt_boot_pd, %edi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b

    /* PDPT entries 0-3 -> the page directories, P | RW. */
    mov $xen_rt_boot_pdpt, %edi
    mov $xen_rt_boot_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
2:  mov %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $4, %ecx
    jb 2b

    /* PML4 entry 0 -> PDPT. */
    mov $xen_rt_boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, xen_rt_boot_pml4
    movl $0, xen_rt_boot_pml4 + 4
    mov $xen_rt_boot_pml4, %eax
    mov %eax, %cr3

    /* cr4: PAE (bit 5), OSFXSR (bit 9), OSXMMEXCPT (bit 10). */
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4

    /* EFER (MSR 0xc0000080).LME (bit 8). */
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr

    /* cr0: PG (31) | MP (1) | PE (0); clear EM (2) and TS (3) so SSE works. */
    mov %cr0, %eax
    and $0xfffffff3, %eax
    or $0x80000003, %eax
    mov %eax, %cr0

    lgdt xen_rt_boot_gdt_ptr
    ljmp $0x08, $3f

    .code64
3:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $xen_rt_boot_stack_top, %esp    /* zero-extends into rsp; 16-byte aligned */
    mov %esi, %edi                       /* rdi = start_info paddr, zero-extended */
    xor %ebp, %ebp
    call xen_rt_pvh_start
4:  hlt
    jmp 4b

/* 64-bit PV entry (XEN_ELFNOTE_ENTRY). xen.h start of day: long mode, ring 3, Xen's
 * page tables mapping the bootstrap region at VIRT_BASE (0) + pseudo-physical address,
 * rsi = start_info_t, rsp = end of the bootstrap stack, upcalls masked. Xen filled the
 * hypercall page at domain build (XEN_ELFNOTE_HYPERCALL_PAGE). cr0.TS may be set: clear it
 * with fpu_taskswitch(0) (hypercall 5) before Rust code uses SSE. */
    .globl xen_pv_start
xen_pv_start:
    cld
    mov %rsp, %r12                  /* end of Xen's bootstrap stack: the heap starts there */
    mov %rsi, %r13                  /* start_info_t */
    lea xen_rt_boot_stack_top(%rip), %rsp
    xor %edi, %edi
    call xen_rt_hypercall_page + 5 * 32
    mov %r13, %rdi
    mov %r12, %rsi
    xor %ebp, %ebp
    call xen_rt_pv_start
5:  jmp 5b

    .section .rodata.boot, "a"
    .balign 16
xen_rt_boot_gdt:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10: data, DPL 0 */
xen_rt_boot_gdt_end:
    .balign 8
xen_rt_boot_gdt_ptr:
    .word xen_rt_boot_gdt_end - xen_rt_boot_gdt - 1
    .quad xen_rt_boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
xen_rt_boot_pml4:
    .skip 4096
xen_rt_boot_pdpt:
    .skip 4096
xen_rt_boot_pd:
    .skip 4 * 4096
    .balign 16
xen_rt_boot_stack:
    .skip 128 * 1024
xen_rt_boot_stack_top:

/* Xen ELF notes (elfnote.h). */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 11f - 10f, 6           /* XEN_ELFNOTE_GUEST_OS */
    .asciz "Xen"
10: .asciz "xenolith"
11: .balign 4
    .long 4, 13f - 12f, 7           /* XEN_ELFNOTE_GUEST_VERSION */
    .asciz "Xen"
12: .asciz "0.1"
13: .balign 4
    .long 4, 15f - 14f, 5           /* XEN_ELFNOTE_XEN_VERSION */
    .asciz "Xen"
14: .asciz "xen-3.0"
15: .balign 4
    .long 4, 17f - 16f, 8           /* XEN_ELFNOTE_LOADER */
    .asciz "Xen"
16: .asciz "generic"
17: .balign 4
    .long 4, 8, 3                   /* XEN_ELFNOTE_VIRT_BASE */
    .asciz "Xen"
    .quad 0
    .long 4, 8, 4                   /* XEN_ELFNOTE_PADDR_OFFSET */
    .asciz "Xen"
    .quad 0
    .long 4, 8, 1                   /* XEN_ELFNOTE_ENTRY (PV, virtual) */
    .asciz "Xen"
    .quad xen_pv_start
    .long 4, 8, 2                   /* XEN_ELFNOTE_HYPERCALL_PAGE (PV, virtual) */
    .asciz "Xen"
    .quad xen_rt_hypercall_page
    .long 4, 4, 18                  /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long xen_pvh_start
