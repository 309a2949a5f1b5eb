use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");

    // libzmq only compiles its CURVE mechanism when it is given libsodium;
    // without it `zmq_has("curve")` is false and every CURVE socket option
    // fails with ENOTSUP. libsodium-sys-stable builds it and links it into
    // the final artifact; this build only needs its headers.
    let include = env::var("DEP_SODIUM_INCLUDE")
        .expect("libsodium-sys-stable did not report its include directory");
    let lib = env::var("DEP_SODIUM_LIB")
        .expect("libsodium-sys-stable did not report its library directory");
    // As a path dependency this crate's build output is shown on every
    // build; libzmq's own C++ warnings are not ours to fix.
    let mut flags = env::var("CXXFLAGS").unwrap_or_default();
    flags.push_str(" -w");
    // libzmq's own CMake build signals between its threads through an
    // eventfd on Linux; zeromq-src does not say it may, so libzmq falls
    // back to a Unix socket pair, whose every signal allocates and queues
    // a socket buffer. A signal goes with nearly every message sent.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        flags.push_str(" -DZMQ_HAVE_EVENTFD=1 -DZMQ_HAVE_EVENTFD_CLOEXEC=1");
    }
    env::set_var("CXXFLAGS", flags);
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
    // Read by tasker-transport's build script (as DEP_ZMQ_CURVE): a build
    // that took zmq-sys from crates.io instead of this patch fails there,
    // naming the patch, rather than in the middle of compiling it.
    println!("cargo:curve=1");
    // Fails to compile against crates.io's zeromq-src: its libzmq lets a
    // peer choose the routing id that aborts the orchestrator.
    if zeromq_src::ADD_TASKER_CORE_VENDOR_ZEROMQ_SRC_TO_PATCH_CRATES_IO {
        println!("cargo:router_assigns_ids=1");
    }
}
