//! What a `tasker worker` logs about its connection, as a user watching it
//! sees it: where it waits for an orchestrator (once, however long it
//! waits), what it serves when it registers, and one warning when the
//! orchestrator goes away. The SDKs' workers run the same runtime and
//! forward these lines to their host's logger.

mod common;

use common::free_endpoint;
use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const TASKER: &str = env!("CARGO_BIN_EXE_tasker");

struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Its stderr lines, as they come.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The lines that arrive within `time`.
fn lines_during(rx: &Receiver<String>, time: Duration) -> Vec<String> {
    let deadline = Instant::now() + time;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    lines
}

fn count(lines: &[String], text: &str) -> usize {
    lines.iter().filter(|l| l.contains(text)).count()
}

/// `tasker ARGS` with no config file or environment of the user's, and
/// 100 ms heartbeats: silence counts after 300 ms.
fn tasker(args: &[&str]) -> Command {
    let mut command = Command::new(TASKER);
    command
        .args(args)
        .env("TASKER_HEARTBEAT_INTERVAL_MS", "100")
        .env_remove("TASKER_CONFIG")
        .env_remove("TASKER_ENV");
    command
}

/// A `tasker worker` of `handlers` at `endpoint`, logging at info to a
/// pipe, its reconnect backoff from `backoff_ms.0` to `backoff_ms.1`.
fn worker(endpoint: &str, handlers: &str, backoff_ms: (u64, u64)) -> Child {
    tasker(&["worker", "--endpoint", endpoint, "--handlers", handlers])
        .env("TASKER_RECONNECT_INITIAL_MS", backoff_ms.0.to_string())
        .env("TASKER_RECONNECT_MAX_MS", backoff_ms.1.to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A `tasker dispatch` at `endpoint` handing out the batch `input`.
fn dispatch(endpoint: &str, input: &[u8]) -> Child {
    let mut dispatch = tasker(&["dispatch", "-", "--endpoint", endpoint])
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = dispatch.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    dispatch
}

#[test]
fn a_worker_says_once_where_it_waits_what_it_serves_when_it_registers_and_warns_once_when_the_orchestrator_goes(
) {
    let endpoint = free_endpoint();
    // The orchestrator counts as silent after 3 × 100 ms: a worker waiting
    // two seconds goes through several rounds of reconnecting.
    let mut worker = worker(&endpoint, "echo,sleep", (50, 100));
    let lines = lines_of(&mut worker);
    let mut reaper = Reaper(vec![worker]);

    let waiting = lines_during(&lines, Duration::from_secs(2));
    // A log read through a pipe is plain text: no terminal colour codes.
    assert!(waiting.iter().all(|l| !l.contains('\x1b')), "{waiting:#?}");
    let said = format!("waiting for an orchestrator at {endpoint}");
    assert_eq!(count(&waiting, &said), 1, "{waiting:#?}");
    assert_eq!(count(&waiting, "WARN"), 0, "{waiting:#?}");

    // An orchestrator comes, hands the worker a long step, and dies.
    reaper.0.push(dispatch(
        &endpoint,
        br#"{"steps":[{"step_id":1,"handler_class":"sleep","handler_config":{"ms":20000},"metadata":{"timeout_ms":60000}}]}"#,
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    let registered = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("registered with orchestrator") => break line,
            Ok(_) => continue,
            Err(e) => panic!("the worker never registered: {e}"),
        }
    };
    assert!(
        registered.contains(&format!("endpoint={endpoint}")),
        "{registered}"
    );
    assert!(registered.contains("handlers=echo,sleep"), "{registered}");
    // Its step is out at the worker: the orchestrator dies without a word.
    std::thread::sleep(Duration::from_millis(300));
    reaper.0[1].kill().unwrap();
    reaper.0[1].wait().unwrap();

    let lost = lines_during(&lines, Duration::from_secs(2));
    let warned = format!("lost the orchestrator at {endpoint}");
    assert_eq!(count(&lost, &warned), 1, "{lost:#?}");
    assert_eq!(count(&lost, "WARN"), 1, "{lost:#?}");
    assert_eq!(count(&lost, "waiting for an orchestrator"), 0, "{lost:#?}");
}

/// A worker waiting out a reconnect backoff longer than the heartbeat
/// expiry, with no orchestrator up, is not late: it warned once a round
/// that it "could not beat ... its thread was busy or the process stopped"
/// (the chaos helper: `late_ms=5001`, the backoff, with serve stopped),
/// sending an operator after a CPU problem that did not exist.
#[test]
fn a_worker_waiting_out_a_long_reconnect_backoff_does_not_say_it_could_not_beat() {
    let endpoint = free_endpoint();
    let mut worker = worker(&endpoint, "echo", (400, 800));
    let lines = lines_of(&mut worker);
    let _reaper = Reaper(vec![worker]);
    // Expiry 300 ms; backoffs of 400 and 800 ms: several rounds.
    let waited = lines_during(&lines, Duration::from_secs(4));
    assert_eq!(count(&waited, "could not beat"), 0, "{waited:#?}");
    assert_eq!(count(&waited, "WARN"), 0, "{waited:#?}");
}

/// After a restart of `serve` a worker hears `unknown_worker` once for each
/// message it sent before its hello was read (a heartbeat, results) and
/// says hello to each (SPEC §5 rule 12): every worker logged "saying hello
/// again" and "registered with orchestrator" twice in the same millisecond.
#[test]
fn unknown_worker_twice_in_a_row_is_said_once_and_so_is_the_registration_it_leads_to() {
    use tasker_protocol::{codec, OrchestratorMessage, ProtocolError, ProtocolErrorCode, Welcome};
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.set_rcvtimeo(100).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let mut worker = worker(&endpoint, "echo", (50, 100));
    let lines = lines_of(&mut worker);
    let _reaper = Reaper(vec![worker]);

    let welcome = codec::encode(&OrchestratorMessage::Welcome(Welcome {
        heartbeat_interval_ms: 1_000,
        liveness: 3,
        max_message_bytes: 1 << 20,
        orchestrator_id: "o1".into(),
        max_json_depth: 64,
    }))
    .unwrap();
    let unknown = codec::encode(&OrchestratorMessage::ProtocolError(ProtocolError {
        code: ProtocolErrorCode::UnknownWorker,
        message: "no worker is registered on this connection".into(),
    }))
    .unwrap();
    let send = |peer: &[u8], message: &[Vec<u8>]| {
        let mut frames = vec![peer.to_vec()];
        frames.extend(message.iter().cloned());
        router.send_multipart(frames, 0).unwrap();
    };
    // Welcomes each hello; after the first, tells the worker twice that it
    // is unknown, as a restarted orchestrator answers two messages.
    let mut hellos = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while hellos < 3 {
        assert!(Instant::now() < deadline, "{hellos} hellos");
        let Ok(frames) = router.recv_multipart(0) else {
            continue;
        };
        if !frames[frames.len() - 1].starts_with(br#"{"type":"hello""#) {
            continue;
        }
        hellos += 1;
        send(&frames[0], &welcome);
        if hellos == 1 {
            send(&frames[0], &unknown);
            send(&frames[0], &unknown);
        }
    }
    let said = lines_during(&lines, Duration::from_millis(500));
    assert_eq!(count(&said, "saying hello again"), 1, "{said:#?}");
    assert_eq!(count(&said, "registered with orchestrator"), 2, "{said:#?}");
}

/// A handler's failure is said in the worker's own log, where a developer
/// debugging the handler looks first: it showed only in the orchestrator's
/// log and through its API (the Node SDK's worker said nothing of it even
/// at debug). Its first line, quoted.
#[test]
fn a_worker_says_which_step_failed_and_why() {
    let endpoint = free_endpoint();
    let mut worker = worker(&endpoint, "fail_permanent,fail_retryable", (50, 100));
    let lines = lines_of(&mut worker);
    let mut reaper = Reaper(vec![worker]);
    reaper.0.push(dispatch(
        &endpoint,
        br#"{"steps":[{"step_id":7,"handler_class":"fail_permanent","metadata":{"timeout_ms":10000}},{"step_id":8,"handler_class":"fail_retryable","metadata":{"timeout_ms":10000}}]}"#,
    ));
    let mut failed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while failed.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("step failed") => failed.push(line),
            Ok(_) => continue,
            Err(e) => panic!("the worker said no failure: {e} ({failed:#?})"),
        }
    }
    let of = |step: &str| failed.iter().find(|l| l.contains(step)).expect(step);
    assert!(of("step_id=7").contains("retryable=false"), "{failed:#?}");
    assert!(of("step_id=8").contains("retryable=true"), "{failed:#?}");
    assert!(
        failed
            .iter()
            .all(|l| l.contains("INFO") && l.contains("error_type=\"")),
        "{failed:#?}"
    );
}
