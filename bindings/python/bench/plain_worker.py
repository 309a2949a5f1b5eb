"""A hand-written tasker/1 worker in plain Python: pyzmq + json, no binding.

The benchmark's baseline for the Python binding. It speaks the real protocol
(protocol/SPEC.md): DEALER, hello, welcome (adopting the interval and
liveness), heartbeats both ways, reconnect with backoff on silence or
goodbye, hello again on `unknown_worker`, step batches run on a thread pool
(one pool task per received batch, not per step), results batched back, and
on SIGTERM/SIGINT a drain, waiting for the running steps, and goodbye.

It is written to be fast the way a careful pyzmq user would write it: the
socket is touched by the I/O thread only; pool threads hand results back
through a queue and wake the I/O thread over an inproc PAIR socket.

Configuration: TASKER_ENDPOINT (default tcp://127.0.0.1:5555) and
TASKER_WORKER_CAPACITY (default 8); handler `noop` returns null and `echo`
returns the task_context.
"""

import json
import os
import queue
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import zmq

HEADER = b"tasker/1.0"
ENDPOINT = os.environ.get("TASKER_ENDPOINT", "tcp://127.0.0.1:5555")
CAPACITY = int(os.environ.get("TASKER_WORKER_CAPACITY", "8"))
THREADS = int(os.environ.get("PLAIN_WORKER_THREADS", "4"))
WORKER_ID = f"plain-python-{os.getpid()}-{uuid.uuid4().hex[:8]}"
HANDLERS = {
    "noop": lambda step: None,
    "echo": lambda step: step.get("task_context"),
}
SHUTDOWN_TIMEOUT = 10.0

dumps = json.dumps
loads = json.loads


def run_batch(steps, results, wake_lock, wake_sock):
    """Pool thread: runs a batch's steps, hands their results to the I/O thread."""
    out = []
    for step in steps:
        t0 = time.perf_counter()
        md = {"attempt": step["metadata"]["attempt"], "worker_id": WORKER_ID}
        fn = HANDLERS.get(step["handler_class"])
        if fn is None:
            res = {"step_id": step["step_id"], "status": "failed", "error": {
                "message": f"no handler {step['handler_class']!r}",
                "error_type": "UnknownHandler", "retryable": False}}
            md["retryable"] = False
        else:
            try:
                res = {"step_id": step["step_id"], "status": "completed", "output": fn(step)}
                md["retryable"] = False
            except Exception as e:  # noqa: BLE001
                res = {"step_id": step["step_id"], "status": "failed", "error": {
                    "message": str(e), "error_type": type(e).__name__, "retryable": False}}
                md["retryable"] = False
        md["execution_time_ms"] = int((time.perf_counter() - t0) * 1000)
        res["metadata"] = md
        out.append(res)
    stamp = datetime.now(timezone.utc).isoformat()
    for res in out:
        res["metadata"]["completed_at"] = stamp
    results.put(out)
    with wake_lock:
        wake_sock.send(b"", zmq.NOBLOCK)


class PlainWorker:
    def __init__(self):
        self.ctx = zmq.Context()
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="plain")
        self.results = queue.SimpleQueue()
        self.wake_rx = self.ctx.socket(zmq.PAIR)
        self.wake_rx.bind(f"inproc://wake-{id(self)}")
        self.wake_tx = self.ctx.socket(zmq.PAIR)
        self.wake_tx.setsockopt(zmq.SNDHWM, 0)
        self.wake_tx.connect(f"inproc://wake-{id(self)}")
        import threading
        self.wake_lock = threading.Lock()
        # (step_id, attempt) -> (batch_id, orchestrator_id of its welcome)
        self.held = {}
        self.orchestrator_id = None
        self.interval, self.expiry, self.backoff = 1.0, 3.0, 0.1
        self.stopping = False
        self.sock = None

    def send(self, msg):
        self.sock.send_multipart([HEADER, dumps(msg).encode()])

    def hello(self):
        self.send({"type": "hello", "worker_id": WORKER_ID, "handlers": list(HANDLERS),
                   "capacity": CAPACITY, "language": "python", "pid": os.getpid(),
                   "in_progress": [{"step_id": s, "attempt": a, "orchestrator_id": o}
                                   for (s, a), (_, o) in self.held.items()]})
        if self.stopping:
            self.send({"type": "drain", "returned": []})

    def connect(self):
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 100000)
        sock.setsockopt(zmq.RCVHWM, 100000)
        sock.connect(ENDPOINT)
        self.sock = sock
        self.hello()

    def flush_results(self):
        results = []
        while True:
            try:
                results.extend(self.results.get_nowait())
            except queue.Empty:
                break
        if not results:
            return
        # One message per orchestrator the results answer (a restarted one
        # still gets the results of its predecessor's steps, tagged so).
        by_orchestrator = {}
        for r in results:
            batch_id, orchestrator_id = self.held.pop((r["step_id"], r["metadata"]["attempt"]))
            by_orchestrator.setdefault(orchestrator_id, (batch_id, []))[1].append(r)
        for orchestrator_id, (batch_id, rs) in by_orchestrator.items():
            for i in range(0, len(rs), 512):
                self.send({"type": "step_batch_response", "batch_id": batch_id,
                           "orchestrator_id": orchestrator_id, "protocol_version": "1.0",
                           "results": rs[i:i + 512]})

    def run(self):
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        self.connect()
        heard = beat = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.wake_rx, zmq.POLLIN)
        poller.register(self.sock, zmq.POLLIN)
        drain_deadline = None
        while True:
            if self.stopping and drain_deadline is None:
                self.send({"type": "drain", "returned": []})
                drain_deadline = time.monotonic() + SHUTDOWN_TIMEOUT
            if drain_deadline is not None and (not self.held or time.monotonic() > drain_deadline):
                self.flush_results()
                self.send({"type": "goodbye", "reason": "worker stopping"})
                break
            timeout = max(0.0, min(self.interval - (time.monotonic() - beat), 0.2))
            events = dict(poller.poll(timeout * 1000))
            if self.wake_rx in events:
                while True:
                    try:
                        self.wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                self.flush_results()
            if self.sock in events:
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    heard = time.monotonic()
                    if len(frames) != 2 or not frames[0].startswith(b"tasker/1."):
                        continue
                    msg = loads(frames[1])
                    kind = msg.get("type")
                    if kind == "step_batch_request":
                        steps = msg["steps"]
                        if self.stopping:
                            self.send({"type": "drain", "returned": [
                                {"step_id": s["step_id"], "attempt": s["metadata"]["attempt"],
                                 "orchestrator_id": self.orchestrator_id}
                                for s in steps]})
                            continue
                        for s in steps:
                            self.held[(s["step_id"], s["metadata"]["attempt"])] = (
                                msg["batch_id"], self.orchestrator_id)
                        self.pool.submit(run_batch, steps, self.results, self.wake_lock, self.wake_tx)
                    elif kind == "welcome":
                        self.orchestrator_id = msg["orchestrator_id"]
                        self.interval = msg["heartbeat_interval_ms"] / 1000
                        self.expiry = self.interval * msg["liveness"]
                        self.backoff = 0.1
                    elif kind == "protocol_error" and msg.get("code") == "unknown_worker":
                        self.hello()
                    elif kind == "goodbye":
                        heard = float("-inf")
            now = time.monotonic()
            if now - heard > self.expiry:
                poller.unregister(self.sock)
                self.sock.close(linger=0)
                time.sleep(self.backoff)
                self.backoff = min(self.backoff * 2, 5.0)
                self.connect()
                poller.register(self.sock, zmq.POLLIN)
                heard = beat = time.monotonic()
            elif now - beat >= self.interval:
                self.send({"type": "heartbeat"})
                beat = now
        self.sock.close(linger=1000)
        self.pool.shutdown(wait=False)

    def on_signal(self, signum, frame):
        self.stopping = True


if __name__ == "__main__":
    PlainWorker().run()
