//! Blocking Rust calls made without Ruby's global VM lock.
//!
//! Every wait on the runtime (`next_steps`, `join`, the log queue) goes
//! through [`without_gvl`]: other Ruby threads keep running meanwhile, and
//! Ruby's interrupts (signals, `Thread#kill`, `Thread#raise`, process exit)
//! call the given unblock function, which wakes the wait. The caller then
//! runs the pending interrupts with `Ruby::thread_check_ints`.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

struct Call<F, R> {
    work: Option<F>,
    result: Option<R>,
}

unsafe extern "C" fn run_call<F, R>(data: *mut c_void) -> *mut c_void
where
    F: FnOnce() -> R,
{
    // SAFETY: `data` is the `Call` that `without_gvl` keeps alive across the
    // C call, and only this thread touches it until the call returns.
    let call = unsafe { &mut *(data as *mut Call<F, R>) };
    if let Some(work) = call.work.take() {
        // A panic must not unwind into Ruby's C frames.
        call.result = catch_unwind(AssertUnwindSafe(work)).ok();
    }
    std::ptr::null_mut()
}

unsafe extern "C" fn run_unblock<U>(data: *mut c_void)
where
    U: Fn() + Sync,
{
    // SAFETY: `data` is the `unblock` closure borrowed by `without_gvl` for
    // the whole C call; Ruby calls this only during that call.
    let unblock = unsafe { &*(data as *const U) };
    let _ = catch_unwind(AssertUnwindSafe(unblock));
}

/// Runs `work` with the GVL released; `unblock` (called from another thread
/// by Ruby) must make `work` return soon.
///
/// Returns `None` when an interrupt was already pending (then `work` does
/// not run) or when `work` panicked. `work` must not touch Ruby objects.
/// Uses `rb_thread_call_without_gvl2`, which never raises: the caller checks
/// the interrupts afterwards, once it holds no half-done state.
pub fn without_gvl<F, R, U>(work: F, unblock: U) -> Option<R>
where
    F: FnOnce() -> R,
    U: Fn() + Sync,
{
    let mut call = Call {
        work: Some(work),
        result: None,
    };
    // SAFETY: both pointers outlive the call; the callbacks match them.
    unsafe {
        rb_sys::rb_thread_call_without_gvl2(
            Some(run_call::<F, R>),
            &mut call as *mut Call<F, R> as *mut c_void,
            Some(run_unblock::<U>),
            &unblock as *const U as *mut c_void,
        );
    }
    call.result
}
