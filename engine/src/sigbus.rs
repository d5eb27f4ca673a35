//! Reads of far-tier files through a mapping, made safe against the file shrinking under us.
//!
//! Loading from a mapped page past the end of its file raises SIGBUS, which would kill the
//! process. Far reads therefore run inside [`guarded`]: it notes, in thread-local cells, the
//! mapping being read. The process-wide SIGBUS handler checks that the faulting address lies
//! inside that mapping; if so it maps a page of zeros over the faulting page (so the load
//! completes and the record check fails on the zeros) and records the fault, which `guarded`
//! turns into an error. (A media error on a DAX mapping also raises SIGBUS and is reported the
//! same way: the record cannot be read.) Chaining to a previous handler does not apply that
//! handler's own signal mask or flags. Any other SIGBUS goes to the handler that was installed before ours
//! (or gets the default action), as if we were not here.

use std::cell::Cell;
use std::sync::{Once, OnceLock};

/// The SIGBUS disposition before ours, to pass faults that are not ours on to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

thread_local! {
    static RANGE: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

/// The system page size, read once in `init` (sysconf is not async-signal-safe).
static PAGE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(4096);

fn page_size() -> usize {
    PAGE.load(std::sync::atomic::Ordering::Relaxed)
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, len) = RANGE.with(Cell::get);
    if len != 0 && addr >= start && addr < start + len {
        let page = addr & !(page_size() - 1);
        // SAFETY: replaces one page inside a mapping this thread is reading, which the engine
        // owns; mmap is async-signal-safe.
        let r = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_size(),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            FAULTED.with(|f| f.set(true));
            return;
        }
    }
    // Not ours: hand it to the previous handler, or restore the default action (returning
    // then re-runs the load, which kills the process with SIGBUS as it would have without us).
    if let Some(prev) = PREVIOUS.get() {
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed for SIGBUS with SA_SIGINFO, so
                // it has this signature; we pass the arguments the kernel gave us.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, _ctx);
            } else {
                // SAFETY: a plain handler takes the signal number only.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // SAFETY: signal() with SIG_DFL is async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            PAGE.store(p as usize, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: a zeroed sigaction is a valid starting point; we fill handler and flags.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            // Record the previous disposition before ours can run.
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) == 0 {
                let _ = PREVIOUS.set(old);
            }
            if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
                tracing::warn!("could not install the SIGBUS handler: a far file truncated under the engine will kill the process");
            }
        }
    });
}

/// Prepare the handler (call once before any far read).
pub(crate) fn init() {
    install();
}

/// Run `f`, which loads from `[start, start+len)`; `Err(())` if a load hit a page beyond the
/// end of the file (the mapping then reads as zeros there).
#[inline]
pub(crate) fn guarded<R>(start: *const u8, len: usize, f: impl FnOnce() -> R) -> Result<R, ()> {
    let prev = RANGE.with(|r| r.replace((start as usize, len)));
    FAULTED.with(|c| c.set(false));
    let out = f();
    RANGE.with(|r| r.set(prev));
    if FAULTED.with(Cell::get) {
        Err(())
    } else {
        Ok(out)
    }
}
