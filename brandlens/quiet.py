"""Keep stderr for what a person should read: no TensorFlow, CUDA or absl start-up noise by default.

TensorFlow's native libraries log through absl straight to file descriptor 2
(``I0000 ... port.cc:153] oneDNN custom operations are on``, ``failed call to
cuInit``, ``All log messages before absl::InitializeLog()``), partly before and
regardless of ``TF_CPP_MIN_LOG_LEVEL``. :func:`filter_native_stderr` puts a line filter
on descriptor 2 (inherited by worker processes): native info and warning lines
and the known start-up errors are dropped, everything else passes unchanged.
Python-side, TensorFlow's and absl's loggers and their library warnings are
raised to errors only. ``brandlens --verbose`` installs none of it.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings

# absl/glog native lines: level letter, MMDD, time, thread id, file:line]
_NATIVE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]+\] ?(.*)")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Native errors that every CPU-only or multi-library start prints and that change nothing.
_KNOWN_NOISE = re.compile(rb"failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|could not find cuda drivers|"
                          rb"computation placer already registered|TF-TRT Warning|NUMA node|cuda_dnn|cuda_blas|cuda_fft",
                          re.IGNORECASE)
NOISY_LOGGERS = ("tensorflow", "absl", "h5py", "tensorflow_transform", "tfx_bsl")
NOISY_WARNING_MODULES = r"(tensorflow|keras|tf_keras|tensorflow_transform|tfx_bsl|absl|google\.protobuf|apache_beam|pyarrow)(\.|$)"


def is_noise(line: bytes) -> bool:
    """Whether a native stderr line is start-up noise (info, warning, or a known harmless error)."""
    if line.startswith(_ABSL_PREAMBLE):
        return True
    match = _NATIVE.match(line)
    if not match:
        return False
    return match.group(1) in (b"I", b"W") or bool(_KNOWN_NOISE.search(match.group(2)))


def _pump(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_noise(line))
            if kept:
                os.write(write_fd, kept)
        if pending and not is_noise(pending):
            os.write(write_fd, pending)


def filter_native_stderr() -> None:
    """Route descriptor 2 through the noise filter for the rest of the process (and its children)."""
    try:
        original = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:
        return
    sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_pump, args=(read_fd, original), name="stderr-filter", daemon=True)
    thread.start()

    def restore():
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(original, 2)  # our end of the pipe closes; the filter drains and stops
        thread.join(timeout=2)

    atexit.register(restore)


_filtering = False


def quiet(verbose: bool, native: bool = True) -> None:
    """Set up logging for the command line: DEBUG with ``verbose``, else INFO without library noise.

    ``native``: also filter descriptor 2 (once per process; the command line does, in-process callers
    such as tests need not). Call before TensorFlow is imported: its native log level is read then.
    """
    global _filtering
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if native and not _filtering:
        _filtering = True
        filter_native_stderr()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=NOISY_WARNING_MODULES)
