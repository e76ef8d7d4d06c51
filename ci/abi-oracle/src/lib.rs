//! ABI oracle: compares xenolith's `#[repr(C)]` mirrors with the installed Xen C headers.
//!
//! `build.rs` compiles `oracle.c`, which includes the real headers (`libxen-dev`) and exports
//! one data symbol per fact: `sizeof`/`_Alignof` of each type, `offsetof` and `sizeof` of each
//! field, and the value of each constant. The tests in `tests/` declare those symbols with
//! `extern "C" { static ...: usize; }` (through the macros below) and compare them, item by
//! item, with `size_of`, `align_of`, `offset_of!` and the Rust constants.
//!
//! A [`Checker`] records every comparison and, at the end of a test, panics with the list of
//! every mismatch (each names the C item and the Rust item), so one run shows all of them.
//!
//! Symbol names (built with `concat!` + `#[link_name]`, so the C and Rust sides agree):
//! `xo_size_<tag>`, `xo_align_<tag>`, `xo_signed_<tag>`, `xo_off_<tag>__<field>`,
//! `xo_fsize_<tag>__<field>`, `xo_const_<NAME>`, `xo_str_<NAME>`.

use std::ffi::{c_char, CStr};
use std::fmt::Display;

/// Records comparisons between Rust and C facts; [`Checker::finish`] fails the test if any
/// differed.
#[derive(Debug)]
pub struct Checker {
    suite: &'static str,
    checked: usize,
    failures: Vec<String>,
}

impl Checker {
    /// A checker for one test (`suite` appears in the summary line).
    pub fn new(suite: &'static str) -> Self {
        Self {
            suite,
            checked: 0,
            failures: Vec::new(),
        }
    }

    /// Compare one item: `rust` (what the Rust mirror says) with `c` (what the C headers say).
    pub fn eq(&mut self, item: impl Display, rust: i128, c: i128) {
        self.checked += 1;
        if rust != c {
            self.failures.push(format!("{item}: Rust {rust} != C {c}"));
        }
    }

    /// Compare one string item.
    pub fn eq_str(&mut self, item: impl Display, rust: &str, c: &str) {
        self.checked += 1;
        if rust != c {
            self.failures
                .push(format!("{item}: Rust {rust:?} != C {c:?}"));
        }
    }

    /// Number of items compared so far.
    pub fn checked(&self) -> usize {
        self.checked
    }

    /// Print the count and panic listing every mismatch, if there was one.
    pub fn finish(&mut self) {
        println!(
            "[abi-oracle] {}: {} items checked, {} mismatches",
            self.suite,
            self.checked,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} ABI items differ from the Xen headers:\n  {}",
            self.suite,
            self.failures.len(),
            self.checked,
            self.failures.join("\n  ")
        );
    }
}

/// `size_of::<F>()` for a pointer to `F` (used to size a field without reading it).
pub const fn size_of_pointee<F>(_: *const F) -> usize {
    core::mem::size_of::<F>()
}

/// Read a string symbol exported by `oracle.c` (`const char *const xo_str_NAME`).
///
/// # Safety
/// `p` must point at a NUL-terminated string that lives for the whole program.
pub unsafe fn c_str(p: *const c_char) -> &'static str {
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .expect("oracle strings are ASCII")
}

/// The value of a `const size_t` symbol of `oracle.c`, named by concatenating the arguments.
#[macro_export]
macro_rules! c_usize {
    ($($name:expr),+ $(,)?) => {{
        extern "C" {
            #[link_name = concat!($($name),+)]
            static SYM: usize;
        }
        // SAFETY: oracle.c defines the symbol as a `const size_t`.
        unsafe { SYM }
    }};
}

/// The value of a `const long` symbol of `oracle.c`, named by concatenating the arguments.
#[macro_export]
macro_rules! c_long {
    ($($name:expr),+ $(,)?) => {{
        extern "C" {
            #[link_name = concat!($($name),+)]
            static SYM: i64;
        }
        // SAFETY: oracle.c defines the symbol as a `const long` (64 bits on x86_64).
        unsafe { SYM }
    }};
}

/// Size of field `$f` of type `$T`, without a value of `$T`.
#[macro_export]
macro_rules! field_size {
    ($T:ty, $f:ident) => {{
        let u = core::mem::MaybeUninit::<$T>::uninit();
        let p = u.as_ptr();
        // SAFETY: computes the address of a field inside `u`; nothing is read.
        $crate::size_of_pointee(unsafe { core::ptr::addr_of!((*p).$f) })
    }};
}

/// Check `size_of` and `align_of` of `$T` against `sizeof`/`_Alignof` of C type `$tag`.
#[macro_export]
macro_rules! check_type {
    ($c:expr, $T:ty = $tag:ident) => {{
        $c.eq(
            format!("{}: sizeof (Rust {})", stringify!($tag), stringify!($T)),
            core::mem::size_of::<$T>() as i128,
            $crate::c_usize!("xo_size_", stringify!($tag)) as i128,
        );
        $c.eq(
            format!("{}: alignment (Rust {})", stringify!($tag), stringify!($T)),
            core::mem::align_of::<$T>() as i128,
            $crate::c_usize!("xo_align_", stringify!($tag)) as i128,
        );
    }};
}

/// Check an integer type alias: size, alignment and signedness.
#[macro_export]
macro_rules! check_scalar {
    ($c:expr, $T:ty = $tag:ident) => {{
        $crate::check_type!($c, $T = $tag);
        $c.eq(
            format!("{}: signedness (Rust {})", stringify!($tag), stringify!($T)),
            (<$T>::MIN != 0) as i128,
            $crate::c_usize!("xo_signed_", stringify!($tag)) as i128,
        );
    }};
}

/// Check one field: its offset and its size. Returns the field's Rust size.
#[macro_export]
macro_rules! check_field {
    ($c:expr, $T:ty = $tag:ident, $f:ident => $cf:tt) => {{
        let size = $crate::field_size!($T, $f);
        $c.eq(
            format!(
                "{}.{}: offset (Rust {}.{})",
                stringify!($tag),
                stringify!($cf),
                stringify!($T),
                stringify!($f)
            ),
            core::mem::offset_of!($T, $f) as i128,
            $crate::c_usize!("xo_off_", stringify!($tag), "__", stringify!($cf)) as i128,
        );
        $c.eq(
            format!(
                "{}.{}: size (Rust {}.{})",
                stringify!($tag),
                stringify!($cf),
                stringify!($T),
                stringify!($f)
            ),
            size as i128,
            $crate::c_usize!("xo_fsize_", stringify!($tag), "__", stringify!($cf)) as i128,
        );
        size
    }};
    ($c:expr, $T:ty = $tag:ident, $f:ident) => {
        $crate::check_field!($c, $T = $tag, $f => $f)
    };
}

/// Check a struct: size, alignment, offset and size of every listed field (`rust_name` or
/// `rust_name => c_name`), and that the listed fields plus the Rust-only explicit padding
/// (`pad { ... }`) cover every byte, so no Rust field escapes the check.
#[macro_export]
macro_rules! check_struct {
    ($c:expr, $T:ty = $tag:ident {
        $($f:ident $(=> $cf:tt)?),* $(,)?
    } $(pad { $($p:ident),* $(,)? })?) => {{
        let c: &mut $crate::Checker = $c;
        $crate::check_type!(c, $T = $tag);
        #[allow(unused_mut)]
        let mut covered = 0usize;
        $( covered += $crate::check_field!(c, $T = $tag, $f $(=> $cf)?); )*
        $($( covered += $crate::field_size!($T, $p); )*)?
        c.eq(
            format!(
                "{}: bytes of checked fields + explicit padding == sizeof (Rust {})",
                stringify!($tag),
                stringify!($T)
            ),
            covered as i128,
            core::mem::size_of::<$T>() as i128,
        );
    }};
}

/// Check a union: size, alignment, offset (0) and size of every listed member, and that the
/// largest listed member fills the union.
#[macro_export]
macro_rules! check_union {
    ($c:expr, $T:ty = $tag:ident { $($f:ident $(=> $cf:tt)?),* $(,)? }) => {{
        let c: &mut $crate::Checker = $c;
        $crate::check_type!(c, $T = $tag);
        let mut largest = 0usize;
        $( largest = largest.max($crate::check_field!(c, $T = $tag, $f $(=> $cf)?)); )*
        c.eq(
            format!("{}: largest member == sizeof (Rust {})", stringify!($tag), stringify!($T)),
            largest as i128,
            core::mem::size_of::<$T>() as i128,
        );
    }};
}

/// Check constants: `RUST_PATH = C_NAME, ...` (values compared as integers).
#[macro_export]
macro_rules! check_consts {
    ($c:expr, { $($r:path = $cn:ident),* $(,)? }) => {{
        let c: &mut $crate::Checker = $c;
        $(
            c.eq(
                format!("{} (Rust {})", stringify!($cn), stringify!($r)),
                $r as i128,
                $crate::c_long!("xo_const_", stringify!($cn)) as i128,
            );
        )*
    }};
}

/// Check string constants: `RUST_PATH = C_NAME, ...`.
#[macro_export]
macro_rules! check_strs {
    ($c:expr, { $($r:path = $cn:ident),* $(,)? }) => {{
        let c: &mut $crate::Checker = $c;
        $(
            {
                extern "C" {
                    #[link_name = concat!("xo_str_", stringify!($cn))]
                    static SYM: *const core::ffi::c_char;
                }
                // SAFETY: oracle.c defines the symbol as a pointer to a string literal.
                let s = unsafe { $crate::c_str(SYM) };
                c.eq_str(format!("{} (Rust {})", stringify!($cn), stringify!($r)), $r, s);
            }
        )*
    }};
}
