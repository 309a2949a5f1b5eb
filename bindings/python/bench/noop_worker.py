"""The benchmark's Python-binding worker: serves `noop` (returns None).

Configured from the environment only (TASKER_ENDPOINT, TASKER_WORKER_CAPACITY,
...), as `tasker bench-workers` runs it; exits on SIGTERM after draining.
`--threads N` overrides the number of handler threads.
"""

import argparse

from tasker_core import Worker

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()

worker = Worker(threads=args.threads)


@worker.handler("noop")
def noop(step):
    return None


worker.run()
