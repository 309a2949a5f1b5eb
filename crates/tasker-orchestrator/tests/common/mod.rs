//! Shared set-up: an orchestrator on an ephemeral loopback port, Rust
//! workers connected to it, and a hand-driven raw DEALER peer.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tasker_config::TaskerConfig;
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_protocol::{
    codec, OrchestratorMessage, StepBatchResponse, StepExecutionRequest, StepExecutionResult,
    Welcome, WorkerHello, WorkerMessage,
};

pub fn config() -> TaskerConfig {
    TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        // Short enough for quick death tests, long enough that a loaded CI
        // machine does not starve a live peer past 600 ms.
        heartbeat_interval_ms: 200,
        liveness: 3,
        default_step_timeout_ms: 10_000,
        reconnect_initial_ms: 50,
        reconnect_max_ms: 200,
        shutdown_timeout_ms: 3_000,
        linger_ms: 0,
        ..TaskerConfig::default()
    }
}

/// [`config`] on a loopback port free now, for an orchestrator started
/// again where the first one was (a worker reconnects to the same endpoint);
/// the port is below the ephemeral range, so no connection takes it between.
pub fn config_on_a_fixed_port() -> TaskerConfig {
    let port = tasker_pgtest::free_port().expect("a free port");
    TaskerConfig {
        endpoint: format!("tcp://127.0.0.1:{port}"),
        ..config()
    }
}

pub fn start(config: &TaskerConfig) -> ZmqPubSubExecutor {
    ZmqPubSubExecutor::start(config).expect("orchestrator starts")
}

pub fn worker_config(executor: &ZmqPubSubExecutor) -> TaskerConfig {
    TaskerConfig {
        endpoint: executor.endpoint().to_string(),
        ..executor.config().clone()
    }
}

pub fn steps(
    ids: std::ops::Range<i64>,
    handler: &str,
    timeout_ms: u64,
) -> Vec<StepExecutionRequest> {
    ids.map(|id| StepExecutionRequest::new(id, 1, format!("step-{id}"), handler, timeout_ms))
        .collect()
}

pub fn with_context(mut step: StepExecutionRequest, context: Value) -> StepExecutionRequest {
    step.task_context = context;
    step
}

/// A hello of worker `id` in the one run of it a test has: each of its
/// connections carries the same `incarnation`, as a worker that
/// reconnects does (it is compared only between hellos of one
/// `worker_id`).
pub fn hello_of(id: &str, handlers: Vec<String>, capacity: u32) -> WorkerHello {
    let mut hello = WorkerHello::new(id, handlers, capacity);
    hello.incarnation = Some("the-one-run".into());
    hello
}

/// A peer driven by hand over a real DEALER socket, to do what a
/// well-behaved worker never would.
pub struct RawPeer {
    pub socket: zmq::Socket,
    /// The `orchestrator_id` of the last welcome, for results.
    pub orchestrator_id: std::cell::RefCell<String>,
    _context: zmq::Context,
}

impl RawPeer {
    pub fn connect(endpoint: &str) -> Self {
        Self::connect_with(endpoint, |_| {})
    }

    /// A peer whose socket `set_up` adjusts before it connects (CURVE keys).
    pub fn connect_with(endpoint: &str, set_up: impl FnOnce(&zmq::Socket)) -> Self {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::DEALER).unwrap();
        socket.set_linger(0).unwrap();
        set_up(&socket);
        socket.connect(endpoint).unwrap();
        Self {
            socket,
            orchestrator_id: Default::default(),
            _context: context,
        }
    }

    pub fn send(&self, message: &WorkerMessage) {
        let frames = codec::encode(message).unwrap();
        self.socket.send_multipart(frames, 0).unwrap();
    }

    pub fn send_raw(&self, frames: Vec<Vec<u8>>) {
        self.socket.send_multipart(frames, 0).unwrap();
    }

    pub fn hello(&self, id: &str, handlers: &[&str], capacity: u32) -> Welcome {
        self.send_hello(hello_of(
            id,
            handlers.iter().map(|h| h.to_string()).collect(),
            capacity,
        ))
    }

    /// Sends `hello` and expects a welcome.
    pub fn send_hello(&self, hello: WorkerHello) -> Welcome {
        self.send(&WorkerMessage::Hello(hello));
        match self.recv_skipping_heartbeats(Duration::from_secs(5)) {
            Some(OrchestratorMessage::Welcome(welcome)) => {
                *self.orchestrator_id.borrow_mut() = welcome.orchestrator_id.clone();
                welcome
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Sends results tagged with the orchestrator of the last welcome.
    pub fn respond(&self, results: Vec<StepExecutionResult>) {
        let orchestrator_id = self.orchestrator_id.borrow().clone();
        self.send(&WorkerMessage::StepBatchResponse(StepBatchResponse::new(
            "raw",
            orchestrator_id,
            results,
        )));
    }

    /// The next message within `timeout`, or None.
    pub fn recv(&self, timeout: Duration) -> Option<OrchestratorMessage> {
        if self
            .socket
            .poll(zmq::POLLIN, timeout.as_millis() as i64)
            .unwrap()
            == 0
        {
            return None;
        }
        let frames = self.socket.recv_multipart(0).unwrap();
        Some(codec::decode(&frames, usize::MAX).expect("orchestrator sends valid messages"))
    }

    /// The next non-heartbeat message within `timeout`, answering heartbeats
    /// so the orchestrator keeps this peer alive.
    pub fn recv_skipping_heartbeats(&self, timeout: Duration) -> Option<OrchestratorMessage> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.recv(left)? {
                OrchestratorMessage::Heartbeat(_) => {
                    self.send(&WorkerMessage::Heartbeat(Default::default()));
                }
                other => return Some(other),
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
        }
    }
}

/// A test binary's own log: everything logged at info and above, process
/// wide (a binary that uses it holds only tests that may share it).
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged at info and above from here on, in this process.
pub fn captured() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        capture
    })
}

/// Waits until the capture, from byte `start` on, holds `what`.
pub async fn wait_until_logged(start: usize, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = String::from_utf8_lossy(&captured().0.lock().unwrap()[start..]).contains(what);
        if found {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never logged: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
