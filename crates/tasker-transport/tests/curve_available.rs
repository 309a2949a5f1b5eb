//! The libzmq this workspace links must have CURVE: without libsodium it
//! builds anyway and every CURVE call fails at run time, so this test
//! fails (never skips) when the build lost it.

#[test]
fn the_linked_libzmq_has_curve() {
    assert!(
        zmq::has("curve").unwrap_or(false),
        "libzmq was built without CURVE (is vendor/zmq-sys patched in?)"
    );
    let pair = zmq::CurveKeyPair::new().expect("CURVE key generation");
    assert_eq!(zmq::z85_encode(&pair.public_key).unwrap().len(), 40);
}
