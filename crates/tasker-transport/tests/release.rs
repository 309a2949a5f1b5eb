//! A closed socket's port is free again only when its context's I/O
//! thread gets to it, or when the context ends; `release_endpoint` frees it
//! before returning, so an orchestrator whose context lives on (shared
//! with a worker) can be started again on the same port at once.

use std::time::Duration;

use tasker_transport::monitor::release_endpoint;

fn bind(context: &zmq::Context, endpoint: &str) -> (zmq::Socket, String) {
    let socket = context.socket(zmq::ROUTER).unwrap();
    socket.set_linger(0).unwrap();
    socket.bind(endpoint).unwrap();
    let endpoint = socket.get_last_endpoint().unwrap().unwrap();
    (socket, endpoint)
}

fn release(context: &zmq::Context, socket: &mut zmq::Socket, endpoint: &str) -> bool {
    release_endpoint(context, socket, endpoint, Duration::from_secs(5))
}

#[test]
fn a_released_tcp_port_is_free_at_once_while_its_context_lives_on() {
    let context = zmq::Context::new();
    for _ in 0..50 {
        let (mut socket, endpoint) = bind(&context, "tcp://127.0.0.1:0");
        assert!(release(&context, &mut socket, &endpoint));
        drop(socket);
        // Another ZeroMQ socket of the same context, as a restarted
        // orchestrator sharing it would bind, and a plain listener.
        let (mut again, _) = bind(&context, &endpoint);
        assert!(release(&context, &mut again, &endpoint));
        std::net::TcpListener::bind(endpoint.trim_start_matches("tcp://"))
            .expect("the port is free once released");
    }
}

#[test]
fn a_released_ipc_endpoint_refuses_connections_before_the_call_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasker.sock");
    let context = zmq::Context::new();
    for _ in 0..20 {
        let (mut socket, bound) = bind(&context, &format!("ipc://{}", path.display()));
        std::os::unix::net::UnixStream::connect(&path).expect("bound: it listens");
        assert!(release(&context, &mut socket, &bound));
        // libzmq 4.3 leaves the file; the next bind replaces it.
        let refused = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}

#[test]
fn releasing_an_endpoint_never_bound_returns_false_without_waiting() {
    let context = zmq::Context::new();
    let (mut socket, _) = bind(&context, "tcp://127.0.0.1:0");
    let started = std::time::Instant::now();
    assert!(!release(&context, &mut socket, "tcp://127.0.0.1:1"));
    assert!(started.elapsed() < Duration::from_secs(1));
}
