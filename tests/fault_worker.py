"""A process that imports TensorFlow and Beam once, then forks one child per ``brandlens`` command.

The kill tests (tests/test_faults_kills.py) send it argv lists as JSON lines on stdin; it
answers ``{"pid": N}`` when the child starts and ``{"rc": N, "signal": S}`` when it ends.
The test SIGKILLs the child at a random moment: a real process dying mid-run, without
paying ~9 s of imports per run. ``{"exec": code, "args": [...]}`` runs a Python snippet instead. The parent itself never runs TF ops (forking is safe then).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam  # noqa: E402,F401
import tensorflow  # noqa: E402,F401
import tensorflow_transform.beam  # noqa: E402,F401 (the bottleneck job's second pipeline)

import beam_jobs.bottlenecks.job  # noqa: E402,F401
import beam_jobs.scoring.job  # noqa: E402,F401
from brandlens.cli import main  # noqa: E402


def _child(request: dict) -> int:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        if "exec" in request:  # a snippet of Python with ``args`` (the commit-step kills)
            exec(request["exec"], {"args": request["args"], "__name__": "__fault__"})
            return 0
        return int(main(request["argv"]) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)
    except BaseException:
        traceback.print_exc()
        return 1


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = _child(request)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    print(json.dumps({"ready": True}), flush=True)
    serve()
