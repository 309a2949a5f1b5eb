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
    let flags = env::var("CXXFLAGS").unwrap_or_default();
    env::set_var("CXXFLAGS", format!("{flags} -w"));
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
