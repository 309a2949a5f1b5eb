//! The bundled libzmq's ROUTER names every connection itself
//! (vendor/zeromq-src, router.cpp): a routing id a peer sets is ignored.
//! With stock libzmq a peer that chose the id the next ordinary connection
//! was about to get aborted the process at that connection (an assertion in
//! `add_out_pipe`), and one that chose a dead connection's id was taken for
//! it and answered its steps.

use std::time::Duration;

fn router() -> (zmq::Context, zmq::Socket, String) {
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER).unwrap();
    router.set_rcvtimeo(5_000).unwrap();
    router.bind("tcp://127.0.0.1:0").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    (context, router, endpoint)
}

fn dealer(context: &zmq::Context, endpoint: &str, chosen: Option<&[u8]>) -> zmq::Socket {
    let dealer = context.socket(zmq::DEALER).unwrap();
    if let Some(id) = chosen {
        dealer.set_identity(id).unwrap();
    }
    dealer.set_linger(0).unwrap();
    dealer.connect(endpoint).unwrap();
    dealer
}

/// Sends `body` from `dealer`; the routing id the ROUTER received it under.
fn id_of(router: &zmq::Socket, dealer: &zmq::Socket, body: &str) -> Vec<u8> {
    dealer.send(body, 0).unwrap();
    let frames = router.recv_multipart(0).expect("the message arrives");
    assert_eq!(frames[1], body.as_bytes());
    frames[0].clone()
}

#[test]
fn a_peer_choosing_the_next_automatic_routing_id_does_not_abort_the_router() {
    let (context, router, endpoint) = router();
    let first = dealer(&context, &endpoint, None);
    let id = id_of(&router, &first, "first");
    assert_eq!((id.len(), id[0]), (5, 0), "an automatic id: {id:?}");
    let n = u32::from_be_bytes(id[1..].try_into().unwrap());
    // Strangers ask for the ids the next connections would get (stock
    // libzmq gave each the id it chose).
    let mut seen = std::collections::HashSet::from([id]);
    let strangers: Vec<zmq::Socket> = (2..=9u32)
        .map(|k| {
            let mut chosen = vec![0];
            chosen.extend_from_slice(&n.wrapping_add(k).to_be_bytes());
            let s = dealer(&context, &endpoint, Some(&chosen));
            assert!(seen.insert(id_of(&router, &s, "stranger")));
            s
        })
        .collect();
    // Ordinary connections after them: stock libzmq aborted at the one
    // whose automatic id a stranger held.
    for _ in 0..10 {
        let ordinary = dealer(&context, &endpoint, None);
        assert!(
            seen.insert(id_of(&router, &ordinary, "ordinary")),
            "ids are unique"
        );
    }
    drop(strangers);
}

#[test]
fn a_peer_cannot_take_the_routing_id_of_a_connection_that_just_died() {
    let (context, router, endpoint) = router();
    let victim = dealer(&context, &endpoint, None);
    let victim_id = id_of(&router, &victim, "victim");
    drop(victim);
    std::thread::sleep(Duration::from_millis(200));
    let thief = dealer(&context, &endpoint, Some(&victim_id));
    let thief_id = id_of(&router, &thief, "thief");
    assert_ne!(
        thief_id, victim_id,
        "a newcomer was taken for the dead connection"
    );
    // Nor a live one's, nor a name of its own choosing.
    let other = dealer(&context, &endpoint, Some(b"worker-1"));
    assert_ne!(id_of(&router, &other, "named"), b"worker-1");
}
