//! A message of very many frames is counted, not held: libzmq bounds each
//! frame's size but not their number, and each empty frame (two bytes on
//! the wire) costs 64 bytes held.

use tasker_transport::{recv_frames, MAX_FRAMES_KEPT};

#[test]
fn a_message_of_many_frames_keeps_the_first_few_counts_all_and_the_next_message_is_whole() {
    let context = zmq::Context::new();
    let (push, pull) = (
        context.socket(zmq::PUSH).unwrap(),
        context.socket(zmq::PULL).unwrap(),
    );
    pull.bind("inproc://many-frames").unwrap();
    push.connect("inproc://many-frames").unwrap();
    const FRAMES: usize = 100_000;
    for i in 0..FRAMES {
        let flags = if i + 1 < FRAMES { zmq::SNDMORE } else { 0 };
        push.send(format!("{i}").as_bytes(), flags).unwrap();
    }
    push.send_multipart([&b"head"[..], b"body"], 0).unwrap();

    let many = recv_frames(&pull, 0).unwrap();
    assert_eq!(many.count(), FRAMES);
    assert!(!many.is_whole());
    assert_eq!(many.len(), MAX_FRAMES_KEPT);
    // The first ones, in order.
    for (i, frame) in many.iter().enumerate() {
        assert_eq!(&frame[..], format!("{i}").as_bytes());
    }

    let next = recv_frames(&pull, 0).unwrap();
    assert!(next.is_whole());
    assert_eq!(
        next.iter().map(|f| &f[..]).collect::<Vec<_>>(),
        [&b"head"[..], b"body"]
    );
}
