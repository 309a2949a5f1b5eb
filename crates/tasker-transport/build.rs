//! Checks that zmq-sys is tasker-core's patched one (vendor/zmq-sys, libzmq
//! with CURVE). A project that depends on the crates by path gets zmq-sys
//! from crates.io unless it copies the workspace's `[patch.crates-io]`, and
//! the build then failed deep in this crate (`cannot find function
//! zmq_curve_public in crate zmq_sys`), naming nothing a user could act on.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_ZMQ_CURVE");
    println!("cargo:rerun-if-env-changed=DEP_ZMQ_ROUTER_ASSIGNS_IDS");
    if std::env::var_os("DEP_ZMQ_CURVE").is_none()
        || std::env::var_os("DEP_ZMQ_ROUTER_ASSIGNS_IDS").is_none()
    {
        panic!(
            "tasker-core needs its own zmq-sys and zeromq-src (libzmq built with CURVE, whose \
             ROUTER names its connections itself), not the ones on crates.io. Add to your \
             Cargo.toml:\n\n[patch.crates-io]\nzmq-sys = {{ path = \
             \"PATH/TO/tasker-core/vendor/zmq-sys\" }}\nzeromq-src = {{ path = \
             \"PATH/TO/tasker-core/vendor/zeromq-src\" }}\n\n(README.md, \"Using it from Rust\")"
        );
    }
}
