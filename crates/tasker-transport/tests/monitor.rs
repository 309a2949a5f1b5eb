//! The socket monitor must never wedge its context. libzmq sends monitor
//! events with blocking sends; a closed socket lingers to flush and may
//! still finish a handshake, so if it were still monitored with its reader
//! gone, its context's I/O thread would block for good. A worker that gave
//! up on a stalled orchestrator and reconnected did exactly that: its old
//! socket's handshake completed when the orchestrator resumed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use tasker_transport::monitor::HandshakeMonitor;

/// Accepts one connection and forwards it to `upstream` only once told to:
/// until then the handshake waits, as with a stopped orchestrator.
fn held_relay(upstream: String) -> (String, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (release, released) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        if released.recv().is_err() {
            return;
        }
        let server = TcpStream::connect(upstream).unwrap();
        for (mut from, mut to) in [
            (client.try_clone().unwrap(), server.try_clone().unwrap()),
            (server, client),
        ] {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (format!("tcp://{address}"), release)
}

#[test]
fn a_socket_closed_mid_handshake_does_not_wedge_its_context_when_the_handshake_ends() {
    let peer_context = zmq::Context::new();
    let peer = peer_context.socket(zmq::ROUTER).unwrap();
    peer.set_linger(0).unwrap();
    peer.bind("tcp://127.0.0.1:0").unwrap();
    let upstream = peer.get_last_endpoint().unwrap().unwrap();
    let (relay, release) = held_relay(upstream.trim_start_matches("tcp://").to_string());

    let context = zmq::Context::new();
    let mut dealer = context.socket(zmq::DEALER).unwrap();
    dealer.set_linger(3_000).unwrap();
    let monitor = HandshakeMonitor::attach(&context, &dealer).unwrap();
    dealer.connect(&relay).unwrap();
    // Queued behind the handshake, so the closed socket lingers.
    dealer.send("hello", zmq::DONTWAIT).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    // What a worker does when it gives up on a silent orchestrator.
    monitor.stop(&mut dealer);
    drop(monitor);
    drop(dealer);
    // The orchestrator resumes: the lingering socket's handshake succeeds.
    release.send(()).unwrap();
    assert_eq!(
        peer.poll(zmq::POLLIN, 3_000).unwrap(),
        1,
        "the lingering hello arrives"
    );

    // And the context still moves messages for new sockets.
    let router = context.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.bind("tcp://127.0.0.1:0").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let probe = context.socket(zmq::DEALER).unwrap();
    probe.set_linger(0).unwrap();
    probe.connect(&endpoint).unwrap();
    probe.send("ping", 0).unwrap();
    if router.poll(zmq::POLLIN, 3_000).unwrap() == 0 {
        // A wedged context would hang its own termination too.
        std::mem::forget((router, probe, context));
        panic!("the context's I/O thread is blocked");
    }
}
