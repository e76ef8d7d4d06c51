//! The image runtime of xenolith: what a bootable Xen image needs besides the drivers.
//!
//! * [`hypercall`]: CPUID detection of Xen, the hypercall page, the x86_64 hypercall ABI.
//! * [`xen`]: the real platform, [`Xen`]: event channels over `shared_info` and
//!   `SCHEDOP_poll`, the PV console ring, the clock (`vcpu_time_info`), shutdown. It implements
//!   every platform trait (`Platform`): `Events`, `Clock`, `Console`, `Scheduler` there,
//!   `Grants`/`GrantMapper` in [`gnttab`] (grant table v1), `Pages` in [`memory`].
//! * [`pages`]: the page allocator; [`heap`]: the free-list `#[global_allocator]` that grows
//!   from it; [`sync`]: the spin lock around shared state.
//! * With the `image` feature only (never in host builds or tests): the boot entries — PVH
//!   (`XEN_ELFNOTE_PHYS32_ENTRY`, 32-bit, builds its own 0–4 GiB identity map) and 64-bit PV
//!   (`XEN_ELFNOTE_ENTRY` + `XEN_ELFNOTE_HYPERCALL_PAGE`) in one ELF — and the Xen ELF notes
//!   (`boot.s`), `memcpy`/`memset`/`memmove`/`memcmp`/`bcmp`, the
//!   `#[panic_handler]` (console, then `SCHEDOP_shutdown(crash)`), the memory setup (page
//!   allocator, grant table, mapping window) and the `#[global_allocator]`. The image defines
//!   `#[no_mangle] fn xen_main(xen: &'static Xen) -> !`.
//!
//! `link.ld` is the linker script; an image's build script finds it in
//! `DEP_XEN_RT_LINKER_SCRIPT` (see `examples/hello/build.rs` for the link arguments).
//!
//! Everything here compiles on the host (inline asm is only executed in an image); only
//! the boot path, hypercalls and the pages shared with Xen use `unsafe`.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod gnttab;
pub mod heap;
pub mod hypercall;
pub mod memory;
pub mod pages;
pub mod sync;
pub mod xen;

#[cfg(all(feature = "image", not(test)))]
mod image;

pub use xen::Xen;
pub use xen_platform as platform;
