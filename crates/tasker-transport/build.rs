//! Checks that zmq-sys is tasker-core's patched one (vendor/zmq-sys, libzmq
//! with CURVE). A project that depends on the crates by path gets zmq-sys
//! from crates.io unless it copies the workspace's `[patch.crates-io]`, and
//! the build then failed deep in this crate (`cannot find function
//! zmq_curve_public in crate zmq_sys`), naming nothing a user could act on.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_ZMQ_CURVE");
    if std::env::var_os("DEP_ZMQ_CURVE").is_none() {
        panic!(
            "tasker-core needs its own zmq-sys (libzmq built with CURVE), not the one on \
             crates.io. Add to your Cargo.toml:\n\n[patch.crates-io]\nzmq-sys = {{ path = \
             \"PATH/TO/tasker-core/vendor/zmq-sys\" }}\n\n(README.md, \"Using it from Rust\")"
        );
    }
}
