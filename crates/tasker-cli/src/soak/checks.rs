//! The soak's verdict: reads what the processes recorded and checks it.
//!
//! Inputs, all in the work directory:
//!
//! - `submitted.txt`: `STEP_ID ATTEMPT` per attempt the orchestrator
//!   submitted;
//! - `results.jsonl`: one JSON object per final result it received
//!   (`step_id`, `attempt`, `status`, `error_type`, `worker_id`, `pid` from
//!   the output, `t_ms`, `message`), or `status: missing` when a batch's
//!   result stream ended without one;
//! - `runs.log`: `STEP_ID ATTEMPT PID` per handler start, and `max PID N
//!   CAPACITY` per new most steps run at once by a worker process;
//!
//! and, from the controller, the worker processes (id, language, pid, what
//! was done to them, how they ended) and the chaos events.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::controller::{ChaosEvent, ChaosKind, Fate, Lang, WorkerSummary};
use super::SoakArgs;

/// Everything the checks look at besides the files.
pub struct Inputs<'a> {
    pub args: &'a SoakArgs,
    pub dir: &'a Path,
    pub workers: &'a [WorkerSummary],
    pub chaos: &'a [ChaosEvent],
    pub planned_events: usize,
    pub orchestrator_exit: Option<String>,
    pub orchestrator_clean: bool,
    pub done: Option<&'a Value>,
    pub sampled_rss_kib: u64,
    pub rss_samples: u64,
    /// Why the run ended before the orchestrator did, if it did.
    pub stopped_early: Option<String>,
    /// When the steps began to flow (epoch ms): times are shown from it.
    pub t0_ms: u64,
}

/// How an attempt ended, as far as the checks care.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Completed,
    WorkerLost,
    TimedOut,
    ScheduleTimeout,
    /// The planned retryable failure of the `soak` handler.
    HandlerRetryable,
    /// The batch's result stream ended without a result for it.
    Missing,
    Other(String),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Completed => f.write_str("completed"),
            Kind::WorkerLost => f.write_str("WorkerLost"),
            Kind::TimedOut => f.write_str("TimedOut"),
            Kind::ScheduleTimeout => f.write_str("ScheduleTimeout"),
            Kind::HandlerRetryable => f.write_str("RetryableError"),
            Kind::Missing => f.write_str("no result (stream ended)"),
            Kind::Other(what) => f.write_str(what),
        }
    }
}

struct Res {
    kind: Kind,
    worker_id: String,
    pid: Option<u32>,
    t_ms: u64,
    /// For WorkerLost: the soak worker id its message names.
    lost_worker: Option<String>,
}

type Attempt = (i64, u32);

/// A check's outcome, with the first few offending cases.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    examples: Vec<String>,
    more: usize,
}

const EXAMPLES: usize = 10;

/// Scheduling slack allowed on the orchestrator's liveness verdicts, in ms.
const VERDICT_SLACK_MS: u64 = 500;

/// How long after its SIGTERM a worker counts as draining, in ms (the
/// controller kills it after 20 s).
const TERM_GRACE_MS: u64 = 20_000;

impl Check {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ok: true,
            detail: String::new(),
            examples: Vec::new(),
            more: 0,
        }
    }

    fn fail(&mut self, example: String) {
        self.ok = false;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        } else {
            self.more += 1;
        }
    }
}

/// The first soak worker id (`soak-rust-N`, `soak-python-N`) in `text`.
fn named_worker(text: &str) -> Option<String> {
    for prefix in ["soak-rust-", "soak-python-"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let digits: String = text[start + prefix.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if !digits.is_empty() {
                return Some(format!("{prefix}{digits}"));
            }
            from = start + prefix.len();
        }
    }
    None
}

fn classify(line: &Value) -> Kind {
    let status = line["status"].as_str().unwrap_or("?");
    let error_type = line["error_type"].as_str().unwrap_or("");
    match (status, error_type) {
        ("completed", _) => Kind::Completed,
        ("missing", _) => Kind::Missing,
        (_, "WorkerLost") => Kind::WorkerLost,
        (_, "TimedOut") => Kind::TimedOut,
        (_, "ScheduleTimeout") => Kind::ScheduleTimeout,
        (_, "RetryableError") => Kind::HandlerRetryable,
        (status, error_type) => Kind::Other(format!("{status} {error_type}")),
    }
}

fn lines(path: &Path) -> Result<impl Iterator<Item = String>> {
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(BufReader::new(file).lines().map_while(|l| l.ok()))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs the checks, prints them, the figures and the `soak: N passed, M
/// failed` line; true when all passed.
pub fn report(inputs: Inputs<'_>) -> Result<bool> {
    let Inputs {
        args,
        dir,
        workers,
        chaos,
        planned_events,
        ..
    } = inputs;
    let expiry = args.expiry_ms();

    // ----- read the records ---------------------------------------------
    let mut submitted: HashMap<Attempt, u32> = HashMap::new();
    let mut last_attempt: HashMap<i64, u32> = HashMap::new();
    let mut bad_records = Vec::new();
    let path = dir.join("submitted.txt");
    if path.exists() {
        for line in lines(&path)? {
            let mut it = line.split_whitespace().map(str::parse::<i64>);
            match (it.next(), it.next()) {
                (Some(Ok(id)), Some(Ok(attempt))) => {
                    let attempt = attempt as u32;
                    *submitted.entry((id, attempt)).or_default() += 1;
                    let last = last_attempt.entry(id).or_default();
                    *last = (*last).max(attempt);
                }
                _ => bad_records.push(format!("submitted.txt: {line:?}")),
            }
        }
    }

    let mut results: HashMap<Attempt, Res> = HashMap::with_capacity(submitted.len());
    let mut duplicates: Vec<(Attempt, Kind, Kind)> = Vec::new();
    let path = dir.join("results.jsonl");
    if path.exists() {
        for line in lines(&path)? {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                bad_records.push(format!("results.jsonl: {line:?}"));
                continue;
            };
            let (Some(id), Some(attempt)) = (v["step_id"].as_i64(), v["attempt"].as_u64()) else {
                bad_records.push(format!("results.jsonl: {line:?}"));
                continue;
            };
            let kind = classify(&v);
            let key = (id, attempt as u32);
            if let Some(first) = results.get(&key) {
                duplicates.push((key, first.kind.clone(), kind));
                continue;
            }
            let lost_worker = match kind {
                Kind::WorkerLost => v["message"].as_str().and_then(named_worker),
                _ => None,
            };
            results.insert(
                key,
                Res {
                    kind,
                    worker_id: v["worker_id"].as_str().unwrap_or("").to_string(),
                    pid: v["pid"].as_u64().map(|p| p as u32),
                    t_ms: v["t_ms"].as_u64().unwrap_or(0),
                    lost_worker,
                },
            );
        }
    }

    let mut runs: HashMap<Attempt, u32> = HashMap::with_capacity(submitted.len());
    let mut twice: Vec<(Attempt, u32, u32)> = Vec::new();
    let mut most: HashMap<u32, (u32, u32)> = HashMap::new();
    let mut run_lines = 0u64;
    let path = dir.join("runs.log");
    if path.exists() {
        for line in lines(&path)? {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["max", pid, n, cap] => match (pid.parse(), n.parse(), cap.parse()) {
                    (Ok(pid), Ok(n), Ok(cap)) => {
                        let entry = most.entry(pid).or_insert((0, cap));
                        entry.0 = entry.0.max(n);
                    }
                    _ => bad_records.push(format!("runs.log: {line:?}")),
                },
                [id, attempt, pid] => match (id.parse(), attempt.parse(), pid.parse()) {
                    (Ok(id), Ok(attempt), Ok(pid)) => {
                        run_lines += 1;
                        if let Some(&first) = runs.get(&(id, attempt)) {
                            twice.push(((id, attempt), first, pid));
                        } else {
                            runs.insert((id, attempt), pid);
                        }
                    }
                    _ => bad_records.push(format!("runs.log: {line:?}")),
                },
                _ => bad_records.push(format!("runs.log: {line:?}")),
            }
        }
    }

    let by_id: HashMap<&str, &WorkerSummary> = workers.iter().map(|w| (w.id.as_str(), w)).collect();
    let by_pid: HashMap<u32, &WorkerSummary> = workers.iter().map(|w| (w.pid, w)).collect();
    let t0 = inputs.t0_ms;
    let at = |t: u64| format!("+{:.2} s", (t as f64 - t0 as f64) / 1000.0);
    // Orchestrator stops starting within [from, to]: they delay its verdicts.
    let stalls = |from: u64, to: u64| -> u64 {
        chaos
            .iter()
            .filter(|o| o.kind == ChaosKind::StopOrchestrator && o.t_ms >= from && o.t_ms <= to)
            .map(|o| o.duration_ms)
            .sum()
    };
    // Whether a kill or stop of worker `id` explains a WorkerLost (or a
    // TimedOut of a step it ran) at `t`: the orchestrator last heard the
    // worker at most one interval before the disturbance began, and
    // declares it dead at its first liveness check past expiry; a stall of
    // the orchestrator itself in that span delays the verdict by as long.
    let verdict_by = |e: &ChaosEvent| {
        let base = e.t_ms + expiry + args.heartbeat_ms + VERDICT_SLACK_MS;
        let mut due = base;
        loop {
            // A stall that began before the verdict was due delays it, and
            // may push it past the start of the next stall.
            let later = base + stalls(e.t_ms, due);
            if later == due {
                return due;
            }
            due = later;
        }
    };
    let explains = |id: &str, t: u64| {
        chaos.iter().any(|e| {
            e.target == id
                && matches!(e.kind, ChaosKind::Kill | ChaosKind::StopWorker)
                && e.t_ms <= t + 100
                && t <= verdict_by(e)
        })
    };
    // What happened to worker `id`, and the last orchestrator stop before
    // `t`, for the reader of a failure.
    let history = |id: &str, t: u64| {
        let mut parts: Vec<String> = chaos
            .iter()
            .filter(|e| e.target == id)
            .map(|e| match e.duration_ms {
                0 => format!("{} at {}", e.kind.name(), at(e.t_ms)),
                ms => format!("{} at {} for {ms} ms", e.kind.name(), at(e.t_ms)),
            })
            .collect();
        if parts.is_empty() {
            parts.push("never disturbed".into());
        }
        if let Some(o) = chaos
            .iter()
            .rev()
            .find(|o| o.kind == ChaosKind::StopOrchestrator && o.t_ms <= t)
        {
            parts.push(format!(
                "the orchestrator was stopped at {} for {} ms",
                at(o.t_ms),
                o.duration_ms
            ));
        }
        parts.join("; ")
    };

    let mut checks = Vec::new();

    // 1. Exactly one final result per submitted attempt.
    let mut c = Check::new("results");
    let mut missing = 0usize;
    for (&(id, attempt), &n) in &submitted {
        if n > 1 {
            c.fail(format!("step {id} attempt {attempt} submitted {n} times"));
        }
        match results.get(&(id, attempt)) {
            None => {
                missing += 1;
                c.fail(format!("step {id} attempt {attempt}: no final result"));
            }
            Some(r) if r.kind == Kind::Missing => {
                missing += 1;
                c.fail(format!(
                    "step {id} attempt {attempt}: its batch's stream ended without a result"
                ));
            }
            Some(_) => {}
        }
    }
    for ((id, attempt), first, second) in &duplicates {
        c.fail(format!(
            "step {id} attempt {attempt}: two final results ({first}, then {second})"
        ));
    }
    let mut unsolicited = 0usize;
    for &(id, attempt) in results.keys() {
        if !submitted.contains_key(&(id, attempt)) {
            unsolicited += 1;
            c.fail(format!(
                "step {id} attempt {attempt}: a result for an attempt never submitted"
            ));
        }
    }
    for bad in &bad_records {
        c.fail(format!("unreadable record {bad}"));
    }
    c.detail = format!(
        "every step attempt got exactly one final result: {} attempts submitted, {} results, \
         {} duplicates, {missing} missing, {unsolicited} unsolicited",
        submitted.len(),
        results.len() + duplicates.len(),
        duplicates.len(),
    );
    checks.push(c);

    // 2. Every step completed in the end.
    let mut c = Check::new("completed");
    let mut completed_steps = 0u64;
    for id in 1..=args.steps as i64 {
        let Some(&last) = last_attempt.get(&id) else {
            c.fail(format!("step {id}: never submitted"));
            continue;
        };
        match results.get(&(id, last)) {
            Some(r) if r.kind == Kind::Completed => completed_steps += 1,
            Some(r) => c.fail(format!(
                "step {id}: its last attempt, {last}, ended {}",
                r.kind
            )),
            None => c.fail(format!(
                "step {id}: its last attempt, {last}, has no result"
            )),
        }
    }
    c.detail = format!(
        "every step ended completed (after retries): {completed_steps} of {}",
        args.steps
    );
    checks.push(c);

    // 3. No step attempt ran twice.
    let mut c = Check::new("runs once");
    for &((id, attempt), first, second) in &twice {
        c.fail(format!(
            "step {id} attempt {attempt} started twice: by pid {first}, then by pid {second}"
        ));
    }
    let mut phantom = 0usize;
    for &(id, attempt) in runs.keys() {
        if !submitted.contains_key(&(id, attempt)) {
            phantom += 1;
            c.fail(format!(
                "step {id} attempt {attempt} ran but was never submitted"
            ));
        }
    }
    c.detail = format!(
        "no (step_id, attempt) handler run recorded twice: {run_lines} runs, {} twice, \
         {phantom} of attempts never submitted",
        twice.len()
    );
    checks.push(c);

    // 4. A step runs under a new attempt only after its previous run's
    //    attempt was lost (or failed as planned).
    let mut c = Check::new("reruns");
    let mut attempts_run: HashMap<i64, Vec<u32>> = HashMap::with_capacity(runs.len());
    for &(id, attempt) in runs.keys() {
        attempts_run.entry(id).or_default().push(attempt);
    }
    let (mut redeliveries, mut after_lost, mut after_timeout, mut handler_retries) =
        (0u64, 0u64, 0u64, 0u64);
    for (&id, attempts) in &mut attempts_run {
        if attempts.len() < 2 {
            continue;
        }
        attempts.sort_unstable();
        for pair in attempts.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            match results.get(&(id, prev)).map(|r| &r.kind) {
                Some(Kind::WorkerLost) => {
                    redeliveries += 1;
                    after_lost += 1;
                }
                Some(Kind::TimedOut) => {
                    redeliveries += 1;
                    after_timeout += 1;
                }
                Some(Kind::HandlerRetryable) => handler_retries += 1,
                Some(kind) => c.fail(format!(
                    "step {id} ran again at attempt {next} although attempt {prev} ended {kind}"
                )),
                None => c.fail(format!(
                    "step {id} ran again at attempt {next}; attempt {prev} has no result"
                )),
            }
        }
    }
    drop(attempts_run);
    let mut lost_started = 0u64;
    for (&(id, attempt), r) in &results {
        let (_, fail_first) = args.step_plan(id);
        match r.kind {
            Kind::HandlerRetryable if attempt != 1 || !fail_first => c.fail(format!(
                "step {id} attempt {attempt}: a handler failure the soak did not plan"
            )),
            Kind::Completed if attempt == 1 && fail_first => c.fail(format!(
                "step {id} attempt 1 completed, but its handler fails every first attempt"
            )),
            Kind::WorkerLost | Kind::TimedOut if runs.contains_key(&(id, attempt)) => {
                lost_started += 1
            }
            _ => {}
        }
    }
    c.detail = format!(
        "steps ran under several attempts only after a WorkerLost/TimedOut (or planned) \
         failure: {redeliveries} redeliveries ({after_lost} after WorkerLost, {after_timeout} \
         after TimedOut), {handler_retries} planned handler retries"
    );
    checks.push(c);

    // 5. Every completed result comes from a recorded run of that attempt,
    //    by the worker that reported it.
    let mut c = Check::new("genuine");
    let mut completed_by: HashMap<Lang, u64> = HashMap::new();
    for (&(id, attempt), r) in &results {
        if r.kind != Kind::Completed {
            continue;
        }
        let reporter = by_id.get(r.worker_id.as_str());
        if let Some(w) = reporter {
            *completed_by.entry(w.lang).or_default() += 1;
        }
        let Some(&ran) = runs.get(&(id, attempt)) else {
            c.fail(format!(
                "step {id} attempt {attempt} completed (by {:?}) without a recorded run",
                r.worker_id
            ));
            continue;
        };
        if r.pid != Some(ran) {
            c.fail(format!(
                "step {id} attempt {attempt}: output names pid {:?}, but pid {ran} ran it",
                r.pid
            ));
        }
        match reporter {
            Some(w) if w.pid == ran => {}
            Some(w) => c.fail(format!(
                "step {id} attempt {attempt}: completed by {} (pid {}), but pid {ran} ran it",
                w.id, w.pid
            )),
            None => c.fail(format!(
                "step {id} attempt {attempt}: completed by unknown worker {:?}",
                r.worker_id
            )),
        }
    }
    c.detail = "each completed result comes from a recorded run of that attempt by the \
                worker that reported it"
        .to_string();
    checks.push(c);

    // 6. No worker ever ran more steps at once than its capacity.
    let mut c = Check::new("capacity");
    let mut most_by: HashMap<Lang, u32> = HashMap::new();
    for (&pid, &(n, cap)) in &most {
        let lang = by_pid.get(&pid).map(|w| w.lang);
        if let Some(lang) = lang {
            let m = most_by.entry(lang).or_default();
            *m = (*m).max(n);
        }
        if n > cap || cap != args.capacity {
            let who = by_pid
                .get(&pid)
                .map_or("an unknown process", |w| w.id.as_str());
            c.fail(format!(
                "{who} (pid {pid}) ran {n} steps at once, capacity {cap} (declared {})",
                args.capacity
            ));
        }
    }
    if most.is_empty() {
        c.fail("no worker recorded any run".into());
    }
    let shown: Vec<String> = [Lang::Rust, Lang::Python]
        .iter()
        .filter_map(|l| most_by.get(l).map(|n| format!("{} {n}", l.name())))
        .collect();
    c.detail = format!(
        "no worker held more than its capacity: most at once {} (capacity {})",
        shown.join(", "),
        args.capacity
    );
    checks.push(c);

    // 7. Every lost attempt is explained by the chaos.
    let mut c = Check::new("losses");
    let mut drains = Check::new("drains");
    let (mut lost, mut timed_out, mut other_failures, mut lost_draining) = (0u64, 0u64, 0u64, 0u64);
    // Whether worker `id` was draining at `t` (SIGTERM sent, not yet gone).
    let draining = |id: &str, t: u64| {
        chaos.iter().any(|e| {
            e.target == id
                && e.kind == ChaosKind::Term
                && e.t_ms <= t + 100
                && t <= e.t_ms + TERM_GRACE_MS
        })
    };
    let ran = |id: i64, attempt: u32| match runs.get(&(id, attempt)) {
        Some(pid) => format!("it ran on pid {pid}"),
        None => "it never ran".to_string(),
    };
    for (&(id, attempt), r) in &results {
        match &r.kind {
            Kind::WorkerLost => {
                lost += 1;
                match r.lost_worker.as_deref().and_then(|w| by_id.get(w)) {
                    Some(w) if explains(&w.id, r.t_ms) => {}
                    Some(w) if draining(&w.id, r.t_ms) => {
                        lost_draining += 1;
                        drains.fail(format!(
                            "step {id} attempt {attempt}: WorkerLost naming {} at {} while it \
                             drained after SIGTERM; {} ({})",
                            w.id,
                            at(r.t_ms),
                            ran(id, attempt),
                            history(&w.id, r.t_ms)
                        ))
                    }
                    Some(w) => c.fail(format!(
                        "step {id} attempt {attempt}: WorkerLost naming {} at {}, which no kill \
                         or stop of it explains; {} ({})",
                        w.id,
                        at(r.t_ms),
                        ran(id, attempt),
                        history(&w.id, r.t_ms)
                    )),
                    None => c.fail(format!(
                        "step {id} attempt {attempt}: WorkerLost at {} naming no soak worker",
                        at(r.t_ms)
                    )),
                }
            }
            Kind::TimedOut => {
                timed_out += 1;
                let ran_on = runs.get(&(id, attempt)).and_then(|p| by_pid.get(p));
                let explained = match ran_on {
                    Some(w) => explains(&w.id, r.t_ms),
                    None => {
                        let since = r.t_ms.saturating_sub(args.step_timeout_ms + expiry + 2_000);
                        chaos.iter().any(|e| {
                            e.kind != ChaosKind::Term && e.t_ms >= since && e.t_ms <= r.t_ms
                        })
                    }
                };
                if !explained {
                    c.fail(format!(
                        "step {id} attempt {attempt}: TimedOut at {} ({}), which no kill or \
                         stop explains",
                        at(r.t_ms),
                        match ran_on {
                            Some(w) => format!("ran on {}: {}", w.id, history(&w.id, r.t_ms)),
                            None => "never started".into(),
                        }
                    ));
                }
            }
            Kind::Completed | Kind::HandlerRetryable | Kind::Missing => {}
            kind => {
                other_failures += 1;
                c.fail(format!("step {id} attempt {attempt}: ended {kind}"));
            }
        }
    }
    c.detail = format!(
        "attempts lost only to killed or stopped workers: {lost} WorkerLost ({lost_started} \
         of all lost had started), {timed_out} TimedOut, {other_failures} other failures"
    );
    checks.push(c);
    let terms = chaos.iter().filter(|e| e.kind == ChaosKind::Term).count();
    drains.detail = format!(
        "a worker stopped with SIGTERM loses no step (it finishes or returns each): {terms} \
         SIGTERMs, {lost_draining} steps lost while draining"
    );
    checks.push(drains);

    // 8. Worker processes ended as they were told to.
    let mut c = Check::new("workers");
    let (mut killed, mut drained, mut at_end) = (0, 0, 0);
    for w in workers {
        match &w.fate {
            Some(Fate::Killed) => killed += 1,
            Some(Fate::Terminated { clean: true, .. }) => drained += 1,
            Some(Fate::Stopped { clean: true, .. }) => at_end += 1,
            Some(Fate::Terminated { status, .. }) => c.fail(format!(
                "{} (pid {}) after SIGTERM: {status}; see {}",
                w.id,
                w.pid,
                w.log.display()
            )),
            Some(Fate::Stopped { status, .. }) => c.fail(format!(
                "{} (pid {}) at the end of the run: {status}; see {}",
                w.id,
                w.pid,
                w.log.display()
            )),
            Some(Fate::Crashed { status }) => c.fail(format!(
                "{} (pid {}) exited by itself: {status}; see {}",
                w.id,
                w.pid,
                w.log.display()
            )),
            None => c.fail(format!("{} (pid {}): unknown end", w.id, w.pid)),
        }
    }
    let count = |lang| workers.iter().filter(|w| w.lang == lang).count();
    c.detail = format!(
        "no worker crashed, each drained on SIGTERM: {} processes ({} Rust, {} Python), \
         {killed} killed, {drained} drained mid-run, {at_end} stopped at the end",
        workers.len(),
        count(Lang::Rust),
        count(Lang::Python)
    );
    checks.push(c);

    // 9. The orchestrator finished by itself.
    let mut c = Check::new("orchestrator");
    if let Some(why) = &inputs.stopped_early {
        c.fail(format!("the run did not finish: {why}"));
    }
    if !inputs.orchestrator_clean {
        c.fail(format!(
            "the orchestrator process ended {}; see {}",
            inputs.orchestrator_exit.as_deref().unwrap_or("not at all"),
            dir.join("orchestrator.log").display()
        ));
    } else if inputs.done.is_none() {
        c.fail("the orchestrator exited without its final report".into());
    }
    c.detail = format!(
        "the orchestrator process finished and exited cleanly ({})",
        inputs
            .orchestrator_exit
            .as_deref()
            .unwrap_or("still running")
    );
    checks.push(c);

    // 10. Its memory stayed bounded.
    let mut c = Check::new("rss");
    let peak_kib = inputs
        .done
        .and_then(|d| d["peak_rss_kib"].as_u64())
        .unwrap_or(0);
    let max_kib = inputs.sampled_rss_kib.max(peak_kib);
    if inputs.rss_samples == 0 {
        c.fail("no RSS sample of the orchestrator".into());
    }
    if max_kib > args.max_rss_mb * 1024 {
        c.fail(format!(
            "orchestrator RSS reached {:.1} MiB, above --max-rss-mb {}",
            mib(max_kib),
            args.max_rss_mb
        ));
    }
    c.detail = format!(
        "orchestrator RSS bounded: max sampled {:.1} MiB, peak (VmHWM) {:.1} MiB, bound {} MiB",
        mib(inputs.sampled_rss_kib),
        mib(peak_kib),
        args.max_rss_mb
    );
    checks.push(c);

    // 11. The chaos happened as planned.
    let mut c = Check::new("chaos");
    let of = |kind| chaos.iter().filter(|e| e.kind == kind).count();
    if chaos.len() < planned_events {
        c.fail(format!(
            "{} of {planned_events} planned chaos events happened before the run ended \
             (a worker event needs two workers running to pick its victim from)",
            chaos.len()
        ));
    }
    let in_use = super::controller::kinds(args);
    if planned_events >= in_use.len() {
        for kind in in_use {
            if of(kind) == 0 {
                c.fail(format!("no {}", kind.name()));
            }
        }
    }
    let longest_orchestrator_stop = chaos
        .iter()
        .filter(|e| e.kind == ChaosKind::StopOrchestrator)
        .map(|e| e.duration_ms)
        .max()
        .unwrap_or(0);
    c.detail = format!(
        "{} of {planned_events} events: {} kill -9, {} SIGTERM, {} worker SIGSTOP, {} \
         orchestrator SIGSTOP (longest {longest_orchestrator_stop} ms, expiry {expiry} ms)",
        chaos.len(),
        of(ChaosKind::Kill),
        of(ChaosKind::Term),
        of(ChaosKind::StopWorker),
        of(ChaosKind::StopOrchestrator),
    );
    checks.push(c);

    // 12. Each language did its share.
    let mut c = Check::new("languages");
    for (lang, n) in [
        (Lang::Rust, args.rust_workers),
        (Lang::Python, args.python_workers),
    ] {
        if n > 0 && completed_by.get(&lang).copied().unwrap_or(0) == 0 {
            c.fail(format!("no step completed by a {} worker", lang.name()));
        }
    }
    c.detail = format!(
        "steps completed by each language: rust {}, python {}",
        completed_by.get(&Lang::Rust).copied().unwrap_or(0),
        completed_by.get(&Lang::Python).copied().unwrap_or(0)
    );
    checks.push(c);

    // ----- print -----------------------------------------------------------
    println!("checks:");
    for c in &checks {
        println!(
            "  {} {:<13} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
        for e in &c.examples {
            println!("         - {e}");
        }
        if c.more > 0 {
            println!("         - ... and {} more", c.more);
        }
    }
    let elapsed = inputs.done.and_then(|d| d["elapsed_s"].as_f64());
    let rate = elapsed.filter(|&s| s > 0.0).map_or_else(
        || "-".to_string(),
        |s| format!("{:.0}", args.steps as f64 / s),
    );
    println!(
        "figures: {} steps in {} s = {rate} steps/s; {} attempts; chaos: {} kill -9, {} \
         SIGTERM, {} worker SIGSTOP, {} orchestrator SIGSTOP; redeliveries: {redeliveries}; \
         WorkerLost {lost}, TimedOut {timed_out}; worker processes: {}; orchestrator max RSS \
         {:.1} MiB",
        args.steps,
        elapsed.map_or_else(|| "-".to_string(), |s| format!("{s:.1}")),
        submitted.len(),
        of(ChaosKind::Kill),
        of(ChaosKind::Term),
        of(ChaosKind::StopWorker),
        of(ChaosKind::StopOrchestrator),
        workers.len(),
        mib(max_kib),
    );
    if let Some(metrics) = inputs.done.map(|d| &d["metrics"]) {
        println!("orchestrator metrics: {metrics}");
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    println!("soak: {} passed, {failed} failed", checks.len() - failed);
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::named_worker;

    #[test]
    fn worker_ids_are_found_in_messages() {
        assert_eq!(
            named_worker("worker soak-rust-12 was lost (no heartbeat)").as_deref(),
            Some("soak-rust-12")
        );
        assert_eq!(
            named_worker("worker \"soak-python-3\" left").as_deref(),
            Some("soak-python-3")
        );
        assert_eq!(
            named_worker("soak-rust- then soak-rust-4").as_deref(),
            Some("soak-rust-4")
        );
        assert_eq!(named_worker("worker rust-1 was lost"), None);
    }
}
