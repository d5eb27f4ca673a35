//! The engine's lock-free core takes its atomics from here, so that the loom models
//! (`RUSTFLAGS="--cfg tera_loom"`, see `make loom`) can swap in loom's instrumented versions.
//! Everything else in the engine uses `std` and `parking_lot` directly.

#[cfg(tera_loom)]
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};

#[cfg(not(tera_loom))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};

/// Back off inside a wait loop; under loom this yields to the model's scheduler.
pub(crate) fn spin_wait() {
    #[cfg(tera_loom)]
    loom::thread::yield_now();
    #[cfg(not(tera_loom))]
    std::thread::yield_now();
}
