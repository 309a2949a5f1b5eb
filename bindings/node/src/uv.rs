//! Runs the worker's connection on Node's own event loop.
//!
//! Node links libuv and exports it to addons; this module watches the
//! worker socket's descriptor with a `uv_poll_t` and its next deadline with
//! a `uv_timer_t`, and drives the connection ([`Driver::drive`]) when
//! either fires and after JavaScript completes steps or stops. Steps and
//! results then never pass through another thread: the same hand-overs as
//! a worker written with the `zeromq` package.
//!
//! Handles live in memory this module allocates (`uv_handle_size` bytes,
//! then our own state) and are freed in their close callback; each holds
//! one reference to the [`LoopDriver`] until then.

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

use napi::sys::uv_loop_s;
use tasker_worker::event_loop::{Drive, Driver, SocketFd};

// `uv_handle_type` values and `uv_poll_event` flags of uv.h.
const UV_POLL: c_int = 8;
const UV_TIMER: c_int = 13;
const UV_READABLE: c_int = 1;

type Handle = *mut c_void;

extern "C" {
    fn uv_handle_type_name(kind: c_int) -> *const c_char;
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_poll_init(event_loop: *mut uv_loop_s, handle: Handle, fd: c_int) -> c_int;
    fn uv_poll_start(
        handle: Handle,
        events: c_int,
        cb: unsafe extern "C" fn(Handle, c_int, c_int),
    ) -> c_int;
    fn uv_poll_stop(handle: Handle) -> c_int;
    fn uv_timer_init(event_loop: *mut uv_loop_s, handle: Handle) -> c_int;
    fn uv_timer_start(
        handle: Handle,
        cb: unsafe extern "C" fn(Handle),
        timeout: u64,
        repeat: u64,
    ) -> c_int;
    fn uv_timer_stop(handle: Handle) -> c_int;
    fn uv_close(handle: Handle, cb: unsafe extern "C" fn(Handle));
}

/// Errors of libuv calls, named by the call.
#[derive(Debug, thiserror::Error)]
pub enum UvError {
    /// A call failed with this (negative) libuv error code.
    #[error("{call} failed: libuv error {code}")]
    Call { call: &'static str, code: c_int },
    /// The loaded libuv numbers its handle types otherwise than the uv.h
    /// this module was written against.
    #[error("unexpected libuv: handle type {kind} is {name:?}, expected {expected:?}")]
    Mismatch {
        kind: c_int,
        name: String,
        expected: &'static str,
    },
}

/// Checks that the loaded libuv agrees with the constants above; call it
/// before [`start`].
pub fn check_types() -> Result<(), UvError> {
    for (kind, expected) in [(UV_POLL, "poll"), (UV_TIMER, "timer")] {
        // SAFETY: libuv returns a static string, or NULL for unknown types.
        let name = unsafe { uv_handle_type_name(kind) };
        let name = if name.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated static string.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        };
        if name != expected {
            return Err(UvError::Mismatch {
                kind,
                name,
                expected,
            });
        }
    }
    Ok(())
}

fn check(call: &'static str, code: c_int) -> Result<(), UvError> {
    if code < 0 {
        Err(UvError::Call { call, code })
    } else {
        Ok(())
    }
}

/// A watched socket: which one, and the poll handle on our duplicate of
/// its descriptor (ZeroMQ closes its own with the socket, and the number
/// may be reused at once; the duplicate is closed with the handle).
struct Watch {
    socket: u64,
    handle: Handle,
}

/// The connection and the handles that drive it; shared by the native
/// worker and, through their `data`, by the open handles.
pub struct LoopDriver {
    driver: Option<Driver>,
    event_loop: *mut uv_loop_s,
    timer: Option<Handle>,
    watch: Option<Watch>,
}

/// What the native worker holds.
pub type SharedDriver = Rc<RefCell<LoopDriver>>;

/// Starts driving `driver` on `event_loop` and takes its first turn.
pub fn start(event_loop: *mut uv_loop_s, driver: Driver) -> Result<SharedDriver, UvError> {
    let shared = Rc::new(RefCell::new(LoopDriver {
        driver: Some(driver),
        event_loop,
        timer: None,
        watch: None,
    }));
    let timer = new_handle(&shared);
    // SAFETY: `timer` is fresh memory of the timer handle's size; libuv
    // owns it until its close callback.
    if let Err(e) = check("uv_timer_init", unsafe { uv_timer_init(event_loop, timer) }) {
        // Never initialised: free it ourselves.
        unsafe { free_handle(timer) };
        return Err(e);
    }
    shared.borrow_mut().timer = Some(timer);
    drive(&shared);
    Ok(shared)
}

/// Drives the connection now (after JavaScript completed steps or asked to
/// stop). A call made while a turn is running (it cannot happen: turns do
/// not call JavaScript) would be skipped, not nested.
pub fn drive(shared: &SharedDriver) {
    let Ok(mut this) = shared.try_borrow_mut() else {
        return;
    };
    let Some(driver) = this.driver.as_mut() else {
        return;
    };
    match driver.drive() {
        Drive::Closed => this.close(),
        Drive::Running { wake_at } => {
            let fd = driver.fd();
            if let Err(e) = this.watch(fd, shared) {
                tracing::error!(error = %e, "cannot watch the worker socket");
            }
            this.arm(wake_at);
        }
    }
}

impl LoopDriver {
    /// Watches `fd` unless it is the socket watched already.
    fn watch(&mut self, fd: Option<SocketFd>, shared: &SharedDriver) -> Result<(), UvError> {
        if self.watch.as_ref().map(|w| w.socket) == fd.map(|f| f.socket) {
            return Ok(());
        }
        self.unwatch();
        let Some(fd) = fd else {
            return Ok(());
        };
        // SAFETY: dup of a descriptor ZeroMQ keeps open during this call.
        let own = unsafe { libc::dup(fd.fd) };
        if own < 0 {
            return Err(UvError::Call {
                call: "dup",
                code: -std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        }
        let handle = new_handle(shared);
        // SAFETY: fresh handle memory; `own` is ours until the close
        // callback closes it.
        let started = unsafe {
            check("uv_poll_init", uv_poll_init(self.event_loop, handle, own))
                .map_err(|e| (e, false))
                .and_then(|()| {
                    check("uv_poll_start", uv_poll_start(handle, UV_READABLE, on_poll))
                        .map_err(|e| (e, true))
                })
        };
        if let Err((e, initialised)) = started {
            // SAFETY: as above; an initialised handle is closed by libuv,
            // an uninitialised one freed here.
            unsafe {
                if initialised {
                    uv_close(handle, on_close);
                } else {
                    libc::close(own);
                    free_handle(handle);
                }
            }
            return Err(e);
        }
        set_fd(handle, own);
        self.watch = Some(Watch {
            socket: fd.socket,
            handle,
        });
        Ok(())
    }

    /// Stops watching the current socket, if any.
    fn unwatch(&mut self) {
        if let Some(watch) = self.watch.take() {
            // SAFETY: an initialised poll handle, closed once (taken).
            unsafe {
                uv_poll_stop(watch.handle);
                uv_close(watch.handle, on_close);
            }
        }
    }

    /// Sets the timer for the next deadline.
    fn arm(&mut self, wake_at: Option<Instant>) {
        let Some(timer) = self.timer else {
            return;
        };
        // SAFETY: the timer handle is initialised and not closed.
        unsafe {
            match wake_at {
                Some(at) => {
                    // Whole ms, rounded up so it does not fire early.
                    let wait = at.saturating_duration_since(Instant::now());
                    let ms =
                        wait.as_millis() as u64 + u64::from(wait.subsec_nanos() % 1_000_000 != 0);
                    uv_timer_start(timer, on_timer, ms, 0);
                }
                None => {
                    uv_timer_stop(timer);
                }
            }
        }
    }

    /// The connection is done: close the handles (nothing of the worker
    /// holds the event loop any more) and drop the connection off this
    /// thread, since closing its socket may wait out `linger_ms`.
    fn close(&mut self) {
        self.unwatch();
        if let Some(timer) = self.timer.take() {
            // SAFETY: initialised, closed once.
            unsafe {
                uv_timer_stop(timer);
                uv_close(timer, on_close);
            }
        }
        if let Some(driver) = self.driver.take() {
            let _ = std::thread::Builder::new()
                .name("tasker-node-close".into())
                .spawn(move || drop(driver));
        }
    }
}

/// The extra state of a handle, after libuv's part of its memory.
#[repr(C)]
struct Extra {
    shared: *const RefCell<LoopDriver>,
    /// Our duplicate descriptor of a poll handle (-1 for timers).
    fd: c_int,
}

/// One layout for both kinds of handle, so freeing needs no kind: libuv's
/// part (the larger of the two), then `Extra`.
fn layout() -> (std::alloc::Layout, usize) {
    static LAYOUT: OnceLock<(std::alloc::Layout, usize)> = OnceLock::new();
    *LAYOUT.get_or_init(|| {
        // SAFETY: pure queries of libuv.
        let size = unsafe { uv_handle_size(UV_POLL).max(uv_handle_size(UV_TIMER)) };
        let offset = size.next_multiple_of(std::mem::align_of::<Extra>());
        let layout = std::alloc::Layout::from_size_align(
            offset + std::mem::size_of::<Extra>(),
            std::mem::align_of::<Extra>().max(16),
        )
        .expect("handle layout");
        (layout, offset)
    })
}

fn extra(handle: Handle) -> *mut Extra {
    let (_, offset) = layout();
    // SAFETY: allocated by `new_handle` with room for `Extra` at `offset`.
    unsafe { handle.cast::<u8>().add(offset).cast::<Extra>() }
}

/// Zeroed memory for a handle, whose `data` and extra state hold one
/// reference to `shared`.
fn new_handle(shared: &SharedDriver) -> Handle {
    let (layout, _) = layout();
    // SAFETY: a non-zero-sized layout.
    let handle = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<c_void>();
    if handle.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: fresh memory of the layout above.
    unsafe {
        extra(handle).write(Extra {
            shared: Rc::into_raw(Rc::clone(shared)),
            fd: -1,
        })
    };
    handle
}

fn set_fd(handle: Handle, fd: c_int) {
    // SAFETY: a handle made by `new_handle`.
    unsafe { (*extra(handle)).fd = fd };
}

/// Frees a handle's memory and its reference; closes its descriptor.
///
/// # Safety
/// `handle` came from `new_handle` and libuv no longer uses it.
unsafe fn free_handle(handle: Handle) {
    let state = extra(handle).read();
    if state.fd >= 0 {
        libc::close(state.fd);
    }
    drop(Rc::from_raw(state.shared));
    std::alloc::dealloc(handle.cast(), layout().0);
}

/// The driver a handle belongs to (a new reference).
///
/// # Safety
/// `handle` came from `new_handle` and is not freed.
unsafe fn shared_of(handle: Handle) -> SharedDriver {
    let raw = (*extra(handle)).shared;
    Rc::increment_strong_count(raw);
    Rc::from_raw(raw)
}

unsafe extern "C" fn on_poll(handle: Handle, _status: c_int, _events: c_int) {
    // On an error status too: the turn's reads name the problem, and a
    // dead socket is replaced by the silence rule.
    drive(&shared_of(handle));
}

unsafe extern "C" fn on_timer(handle: Handle) {
    drive(&shared_of(handle));
}

unsafe extern "C" fn on_close(handle: Handle) {
    free_handle(handle);
}
