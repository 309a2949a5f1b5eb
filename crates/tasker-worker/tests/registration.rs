//! Registering handlers on the Rust `Worker` builder (its own test binary:
//! it installs the process's log bridge to read the warning).

use std::time::{Duration, Instant};

use serde_json::json;
use tasker_config::TaskerConfig;
use tasker_worker::log_bridge::{self, LogLevel};
use tasker_worker::{HandlerOptions, Worker};

#[test]
fn registering_a_handler_name_again_replaces_the_first_with_a_warning() {
    let bridge = log_bridge::install(LogLevel::Warn).unwrap();
    let _worker = Worker::new(TaskerConfig::default())
        .handler("charge", |_| Ok(json!("first")))
        .handler("refund", |_| Ok(json!(null)));
    assert!(bridge.take_records(100).is_empty(), "two names, no warning");

    let _worker = Worker::new(TaskerConfig::default())
        .handler("charge", |_| Ok(json!("first")))
        .handler_with("charge", HandlerOptions::default(), |_| Ok(json!("second")));
    let deadline = Instant::now() + Duration::from_secs(2);
    let warnings = loop {
        let records = bridge.take_records(100);
        if !records.is_empty() || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lines: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        ["handler registered again: this one replaces the first handler=charge"]
    );
}
