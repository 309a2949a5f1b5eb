//! The open-files limit: every worker connection, HTTP client and store
//! file is a descriptor.

/// Raises this process's soft limit on open files to its hard limit, as Go
/// programs do at start. The usual soft limit, 1024, is reached by a
/// thousand idle TCP connections to the orchestrator's port: libzmq then
/// fails every accept, its listener stays readable so it tries again at
/// once (a thread spinning), and the store cannot open a file. Does nothing
/// when the limit cannot be read or raised.
pub fn raise_to_hard_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given, which lives
    // on this stack for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct, which lives on this stack.
    // A hard limit of "unlimited" is refused for open files (it exceeds
    // fs.nr_open): the soft limit then stays as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
}
