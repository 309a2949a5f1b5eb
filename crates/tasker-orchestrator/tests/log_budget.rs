//! The rate limit on lines about workers coming and going never hides the
//! death of a worker that held work: peers saying hello and going away a
//! hundred a second used up its budget, and a worker that died meanwhile
//! holding a step left no line in the log. This file has its own
//! process-wide log capture, so it holds only this test.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tasker_protocol::{OrchestratorMessage, StepBatchRequest};

const LONG: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_holding_a_step_is_said_however_many_peers_come_and_go() {
    let from = captured().0.lock().unwrap().len();
    let executor = start(&config());
    // Peers saying hello and going, far past the budget of 100 lines a
    // second, the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (endpoint, stop) = (executor.endpoint().to_string(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                RawPeer::connect(&endpoint).hello(&format!("ghost-{n}"), &["other"], 1);
                n += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let holder = RawPeer::connect(executor.endpoint());
    holder.hello("holder", &["work"], 1);
    let handle = executor
        .submit(StepBatchRequest::new("a", steps(1..2, "work", 30_000)))
        .await
        .unwrap();
    // It takes the step and falls silent, as a stopped process does.
    while !matches!(
        holder.recv(Duration::from_secs(5)),
        Some(OrchestratorMessage::StepBatchRequest(_))
    ) {}
    let results = handle.collect().await;
    assert_eq!(results[0].error.as_ref().unwrap().error_type, "WorkerLost");
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    wait_until_logged(from, r#"declared dead worker_id="holder""#).await;
    let log = String::from_utf8_lossy(&captured().0.lock().unwrap()[from..]).to_string();
    assert!(
        log.contains("held back (rate limit)"),
        "the budget was used up"
    );
    executor.shutdown(LONG).await;
}
