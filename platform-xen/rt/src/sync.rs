//! A spin lock for the platform's shared state. Images run on one vCPU with interrupts off and
//! upcalls masked, so a lock is only ever contended by a bug (re-entry): that panics instead of
//! spinning for ever.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A minimal spin lock (no poisoning; re-entry on the same vCPU is detected after a bound).
#[derive(Debug)]
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` only happens under `locked` (acquire/release), as in a mutex.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A lock around `value`.
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Run `f` with the value locked.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut spins = 0u64;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            // One vCPU, no interrupts: a held lock can only be our own (re-entry).
            assert!(spins < 1 << 28, "xen-rt: spin lock re-entered");
            core::hint::spin_loop();
        }
        struct Unlock<'a>(&'a AtomicBool);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _unlock = Unlock(&self.locked);
        // SAFETY: we hold the lock, so this is the only reference to the value.
        f(unsafe { &mut *self.value.get() })
    }
}
