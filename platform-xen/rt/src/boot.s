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

    /* CPU exceptions: without an IDT any fault is a triple fault and Xen reports only
     * "Triple fault" with the registers. 32 interrupt gates (type 0xE, P, DPL 0, cs 0x08)
     * to the stubs below, 16 bytes apart; #DF (8), NMI (2) and #MC (18) switch to the trap
     * stack (IST1 of the TSS) so that a stack overflow is reported too. */
    mov $xen_rt_trap_stubs, %eax
    mov $xen_rt_idt, %edi
    xor %ecx, %ecx
6:  mov %eax, %edx
    mov %dx, (%rdi)                  /* offset 15:0 */
    movw $0x08, 2(%rdi)              /* selector */
    movw $0x8e00, 4(%rdi)            /* IST 0, interrupt gate, present */
    shr $16, %edx
    mov %dx, 6(%rdi)                 /* offset 31:16 */
    movq $0, 8(%rdi)                 /* offset 63:32 (the image is below 4 GiB), reserved */
    add $16, %eax
    add $16, %edi
    inc %ecx
    cmp $32, %ecx
    jb 6b
    movb $1, xen_rt_idt + 2 * 16 + 4
    movb $1, xen_rt_idt + 8 * 16 + 4
    movb $1, xen_rt_idt + 18 * 16 + 4
    lidt xen_rt_idt_ptr
    /* The TSS only carries IST1; its descriptor (GDT 0x18, 16 bytes) gets its base here. */
    mov $xen_rt_trap_stack_top, %eax
    mov %eax, xen_rt_tss + 36         /* IST1, low half (high half zero) */
    movw $104, xen_rt_tss + 102       /* I/O map base = limit + 1: no I/O bitmap */
    mov $xen_rt_tss, %eax
    mov $xen_rt_boot_gdt + 0x18, %edi
    movw $103, (%rdi)                 /* limit 15:0 */
    mov %ax, 2(%rdi)                  /* base 15:0 */
    shr $16, %eax
    mov %al, 4(%rdi)                  /* base 23:16 */
    movb $0x89, 5(%rdi)               /* available 64-bit TSS, present */
    movb $0, 6(%rdi)
    mov %ah, 7(%rdi)                  /* base 31:24 */
    movq $0, 8(%rdi)                  /* base 63:32, reserved */
    mov $0x18, %eax
    ltr %ax

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

/* Exception stubs (PVH), 16 bytes each: push a zero where the CPU pushes no error code,
 * then the vector, and go to xen_rt_trap_common. The CPU pushes an error code for 8, 10-14,
 * 17, 21, 29 and 30 (Intel SDM vol. 3, table 6-1). */
    .balign 16
xen_rt_trap_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\v == 8) || ((\v >= 10) && (\v <= 14)) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    pushq $\v
    .else
    pushq $0
    pushq $\v
    .endif
    jmp xen_rt_trap_common
    .endr

/* Saves the general registers under the vector and error code and calls
 * xen_rt_trap(frame), which reports and never returns (image.rs, TrapFrame). */
xen_rt_trap_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    and $-16, %rsp
    call xen_rt_trap
7:  hlt
    jmp 7b

    .section .data.boot, "aw"
    .balign 16
/* Written at boot: the TSS descriptor at 0x18 gets its base, and ltr sets its busy bit. */
xen_rt_boot_gdt:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10: data, DPL 0 */
    .quad 0, 0                      /* 0x18: 64-bit TSS (filled in at boot) */
xen_rt_boot_gdt_end:
    .balign 8
xen_rt_boot_gdt_ptr:
    .word xen_rt_boot_gdt_end - xen_rt_boot_gdt - 1
    .quad xen_rt_boot_gdt
    .balign 8
xen_rt_idt_ptr:
    .word 32 * 16 - 1
    .quad xen_rt_idt

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
    .balign 16
xen_rt_trap_stack:
    .skip 8 * 1024
xen_rt_trap_stack_top:
    .balign 16
xen_rt_idt:
    .skip 32 * 16
    .balign 16
xen_rt_tss:
    .skip 104

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
