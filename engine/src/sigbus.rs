//! Reads of far-tier files (and, at recovery, checkpoints) through a mapping, made safe
//! against the file shrinking under us or a page that cannot be read.
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
use std::sync::atomic::{compiler_fence, Ordering::SeqCst};
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
    let code = unsafe { (*info).si_code };
    // Only a fault the kernel raised has an address: a SIGBUS sent with kill(2), tgkill(2)
    // or sigqueue(3) (si_code <= 0) carries a pid and uid where the address would be.
    let from_kernel = code > 0;
    // SAFETY: as above.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, len) = RANGE.with(Cell::get);
    if from_kernel && len != 0 && addr >= start && addr < start + len {
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
        if h == libc::SIG_IGN && !from_kernel {
            // A sent SIGBUS the process ignored before us: ignore it still (ours stays).
            return;
        }
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
            if !from_kernel {
                // A sent signal is over once the previous handler returns; it may have reset
                // the disposition to the default on its way (Rust's own stack-overflow
                // handler does, expecting a faulting load to re-run): put ours back, or the
                // next truncated far file would kill the process. A disposition it set on
                // purpose (another handler, ignore) is left as it is.
                // SAFETY: sigaction is async-signal-safe; `our_action` only fills a struct,
                // and `now` is a valid out-pointer.
                unsafe {
                    let mut now: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut now) == 0
                        && now.sa_sigaction == libc::SIG_DFL
                    {
                        let sa = our_action();
                        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
                    }
                }
            }
            return;
        }
    }
    // SAFETY: signal() with SIG_DFL and raise() are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        // A sent signal has no load to re-run: send it again, now to the default action
        // (SA_NODEFER leaves it unblocked), rather than survive it and lose our handler.
        if !from_kernel {
            libc::raise(sig);
        }
    }
}

/// Our disposition for SIGBUS.
fn our_action() -> libc::sigaction {
    // SAFETY: a zeroed sigaction is a valid starting point; we fill handler, flags and mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        sa
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
        // SAFETY: installing a handler for SIGBUS; `old` is a valid out-pointer.
        unsafe {
            let sa = our_action();
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
    /// Puts the previous range and fault flag back however `f` ends: a panic out of `f` (it
    /// may run a caller's closure) must not leave a stale range that a later fault at a
    /// reused address would match; and a `guarded` call inside another's `f` (recovery's
    /// checkpoint loader writes far records) must not clear a fault the outer one saw.
    struct Restore((usize, usize), bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            // The handler must not see the range cleared before `f`'s loads are done.
            compiler_fence(SeqCst);
            RANGE.with(|r| r.set(self.0));
            FAULTED.with(|c| c.set(self.1));
        }
    }
    let restore = Restore(
        RANGE.with(|r| r.replace((start as usize, len))),
        FAULTED.with(|c| c.replace(false)),
    );
    // The handler runs on this thread between our instructions: the compiler must neither
    // sink the range's store past `f`'s loads nor hoist the fault flag's load above them
    // (the cells are plain memory it could otherwise reorder or forward).
    compiler_fence(SeqCst);
    let out = f();
    compiler_fence(SeqCst);
    let faulted = FAULTED.with(Cell::get);
    drop(restore);
    if faulted {
        Err(())
    } else {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_guarded_restores_the_range() {
        init();
        let buf = [0u8; 64];
        let r = std::panic::catch_unwind(|| guarded(buf.as_ptr(), buf.len(), || panic!("boom")));
        assert!(r.is_err());
        assert_eq!(RANGE.with(Cell::get), (0, 0));
        // And a guarded read that ends normally reads and restores.
        assert_eq!(guarded(buf.as_ptr(), buf.len(), || buf[3]), Ok(0));
        assert_eq!(RANGE.with(Cell::get), (0, 0));
    }

    /// A mapping of a file cut to nothing after it was mapped: every load from it faults.
    fn cut_mapping() -> (tempfile::NamedTempFile, memmap2::Mmap) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8192).unwrap();
        // SAFETY: the test owns the file; the loads that fault are made inside `guarded`.
        let map = unsafe { memmap2::Mmap::map(f.as_file()) }.unwrap();
        f.as_file().set_len(0).unwrap();
        (f, map)
    }

    #[test]
    fn a_fault_seen_by_an_outer_guarded_survives_an_inner_one() {
        init();
        let (_f, map) = cut_mapping();
        let other = [7u8; 64];
        let r = guarded(map.as_ptr(), map.len(), || {
            // SAFETY: inside the mapping; the fault is caught and the page reads as zeros.
            let x = unsafe { std::ptr::read_volatile(map.as_ptr().add(4096)) };
            // A read of another range in between, as recovery's loader makes far reads.
            assert_eq!(guarded(other.as_ptr(), other.len(), || other[1]), Ok(7));
            x
        });
        assert_eq!(r, Err(()));
        assert_eq!(RANGE.with(Cell::get), (0, 0));
        assert!(!FAULTED.with(Cell::get));
        // The inner call's own fault is its own, not the outer's.
        let r = guarded(other.as_ptr(), other.len(), || {
            // SAFETY: as above.
            let inner = guarded(map.as_ptr(), map.len(), || unsafe {
                std::ptr::read_volatile(map.as_ptr())
            });
            assert_eq!(inner, Err(()));
            other[0]
        });
        assert_eq!(r, Ok(7));
    }

    /// Run in a child process (this test binary, filtered to one test, with the variable
    /// set to what to do before installing our handler).
    const CHILD: &str = "TERA_SIGBUS_CHILD";

    fn run_child(test: &str, mode: &str) -> std::process::ExitStatus {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("sigbus::tests::{test}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, mode)
            .status()
            .unwrap()
    }

    /// Whether SIGBUS is handled by `on_sigbus` now.
    fn ours_installed() -> bool {
        // SAFETY: querying the disposition into a valid out-pointer.
        unsafe {
            let mut now: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut now) == 0
                && now.sa_sigaction == on_sigbus as *const () as usize
        }
    }

    #[test]
    fn a_sent_sigbus_gets_the_default_action_when_there_was_no_handler() {
        if std::env::var_os(CHILD).is_some() {
            // SAFETY: setting the default disposition has no preconditions.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
            init();
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGBUS) };
            // Survived: the handler swallowed a signal that was not a fault of ours.
            std::process::exit(0);
        }
        use std::os::unix::process::ExitStatusExt;
        let status = run_child(
            "a_sent_sigbus_gets_the_default_action_when_there_was_no_handler",
            "dfl",
        );
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
    }

    #[test]
    fn a_sent_sigbus_stays_ignored_when_it_was_ignored_before() {
        if std::env::var_os(CHILD).is_some() {
            // SAFETY: setting the ignore disposition has no preconditions.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_IGN) };
            init();
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGBUS) };
            std::process::exit(if ours_installed() { 0 } else { 3 });
        }
        let status = run_child(
            "a_sent_sigbus_stays_ignored_when_it_was_ignored_before",
            "ign",
        );
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?} (3: our handler was lost)"
        );
    }

    #[test]
    fn a_sent_sigbus_passed_to_the_previous_handler_leaves_ours_installed() {
        if std::env::var_os(CHILD).is_some() {
            // The previous handler is Rust's own (for stack overflows), which resets the
            // disposition to the default when a signal is not its guard page's.
            init();
            assert!(ours_installed());
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGBUS) };
            std::process::exit(if ours_installed() { 0 } else { 3 });
        }
        let status = run_child(
            "a_sent_sigbus_passed_to_the_previous_handler_leaves_ours_installed",
            "std",
        );
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?} (3: our handler was lost)"
        );
    }
}
