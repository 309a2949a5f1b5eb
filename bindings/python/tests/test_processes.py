"""Whole Python worker processes: sharing a handler, being killed, Ctrl-C."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

from conftest import step


def read_records(path):
    lines = path.read_text().splitlines() if path.exists() else []
    return [tuple(int(x) for x in line.split()) for line in lines]


def test_worker_processes_share_a_handler_without_duplicates(dispatch, worker_process, tmp_path):
    record = tmp_path / "executions.log"
    n = 300
    run = dispatch([step(i, "work") for i in range(n)], workers=3)
    procs = [
        worker_process(run.endpoint, "--capacity", "4", "--sleep", "0.002", "--record", str(record))
        for _ in range(3)
    ]
    results = run.results()
    assert all(r["status"] == "completed" for r in results.values()), results
    executions = read_records(record)
    counts = collections.Counter(step_id for step_id, _, _ in executions)
    assert sorted(counts) == list(range(n))
    assert set(counts.values()) == {1}, "each step ran exactly once"
    pids = {pid for _, _, pid in executions}
    assert len(pids) >= 2, "the work was shared"
    assert pids <= {p.proc.pid for p in procs}
    # The output says which process ran each step, and agrees with the log.
    assert {r["output"]["pid"] for r in results.values()} == pids


def test_killed_worker_steps_come_back_worker_lost(dispatch, worker_process, tmp_path):
    record = tmp_path / "executions.log"
    n = 40
    run = dispatch([step(i, "work", metadata={"timeout_ms": 20000}) for i in range(n)], workers=2)
    victim = worker_process(run.endpoint, "--capacity", "4", "--block", "--announce")
    survivor = worker_process(run.endpoint, "--capacity", "4", "--sleep", "0.01", "--record", str(record))
    victim.expect_line("started")  # it holds steps, one of them running
    victim.signal(signal.SIGKILL)
    results = run.results()

    lost = {i for i, r in results.items() if r["status"] != "completed"}
    assert lost, "the killed worker held steps"
    for i in lost:
        r = results[i]
        assert r["status"] == "failed"
        assert r["error"]["error_type"] == "WorkerLost"
        assert r["error"]["retryable"] is True
    assert len(lost) <= 4  # at most the victim's capacity
    completed = set(results) - lost
    assert len(completed) == n - len(lost)
    executions = collections.Counter(step_id for step_id, _, _ in read_records(record))
    assert set(executions) == completed and set(executions.values()) == {1}
    assert {results[i]["output"]["pid"] for i in completed} == {survivor.proc.pid}


def test_ctrl_c_drains_and_exits_zero(dispatch, worker_process):
    run = dispatch([step(i, "work") for i in range(2)])
    proc = worker_process(run.endpoint, "--capacity", "2", "--sleep", "1.0", "--announce")
    proc.expect_line("started")
    proc.expect_line("started")
    sent = time.monotonic()
    proc.signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0, proc.stderr()
    took = time.monotonic() - sent
    proc.expect_line("exited run")
    results = run.results()
    # The steps in flight finished and were reported before the exit.
    assert [results[i]["status"] for i in range(2)] == ["completed", "completed"], results
    assert took < 5, f"exit took {took:.1f}s after SIGINT"


def test_idle_worker_stops_on_sigint_and_sigterm(dispatch, worker_process):
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Waiting for a second worker keeps this orchestrator up meanwhile.
        run = dispatch([step(1, "work")], workers=2)
        proc = worker_process(run.endpoint, "--capacity", "1")
        proc.expect_line("ready")
        sent = time.monotonic()
        proc.signal(signum)
        assert proc.wait(timeout=10) == 0, proc.stderr()
        took = time.monotonic() - sent
        proc.expect_line("exited run")
        print(f"{signal.Signals(signum).name}: exited {took:.3f}s after the signal")
        assert took < 5


def test_the_runtimes_last_records_are_logged_before_the_worker_says_it_stopped(
    dispatch, worker_process
):
    # The log thread handed them over whenever it got to them: behind a
    # slow logging handler, "stopped" came before "worker connection closed".
    run = dispatch([step(1, "work")], workers=4)
    procs = [worker_process(run.endpoint, "--capacity", "1", "--closing") for _ in range(3)]
    for proc in procs:
        proc.expect_line("ready")
    for proc in procs:
        proc.signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(timeout=10) == 0, proc.stderr()
        lines = [line for line in proc.remaining_lines() if line in ("closed", "stopped", "exited run")]
        assert lines == ["closed", "stopped", "exited run"], proc.stderr()


def test_second_ctrl_c_does_not_wait_for_a_hung_handler(dispatch, worker_process):
    run = dispatch([step(1, "work", metadata={"timeout_ms": 20000})])
    proc = worker_process(run.endpoint, "--capacity", "1", "--block", "--announce")
    proc.expect_line("started")
    proc.signal(signal.SIGINT)  # drains: waits for the hung handler...
    proc.expect_line("draining")
    assert proc.proc.poll() is None, "the first Ctrl-C waits for the running step"
    proc.signal(signal.SIGINT)  # ...the second one does not
    assert proc.wait(timeout=10) != 0


def test_a_worker_started_before_a_fork_does_not_hold_or_mislead_the_child(
    dispatch, worker_process
):
    # gunicorn --preload, a fork pool: the child has a copy of a started
    # worker but none of its threads. It said `connected`, waited for it at
    # exit for the drain time (13 s by default), its run() never returned,
    # and a worker the child started itself had its runtime's records held
    # until it stopped (the log thread was not copied either).
    run = dispatch([step(1, "echo")], workers=2)
    proc = worker_process(run.endpoint, script=Path(__file__).parent / "fork_script.py")
    state = proc.expect_line("CHILD ")
    assert state.endswith("parent's worker state stopped"), state
    refused = proc.expect_line("CHILD run refused: ")
    assert "which this process was forked from" in refused, refused
    assert "after the fork" in refused, refused
    assert proc.expect_line("CHILD join") == "CHILD join True"
    child = state.split()[1]
    proc.expect_line(f"{child} tasker_core.tasker_worker.connection registered with")
    assert proc.expect_line("CHILD served") == "CHILD served True"
    results = run.results()
    assert results[1]["status"] == "completed", results
    assert proc.wait(timeout=30) == 0, proc.stderr()
    lines = proc.remaining_lines()
    exited = next(line for line in lines if line.startswith("PARENT child exited"))
    assert exited.startswith("PARENT child exited 0 after"), exited
    assert float(exited.split()[-1].rstrip("s")) < 5.0, exited
    assert "PARENT stopped True" in lines, lines
