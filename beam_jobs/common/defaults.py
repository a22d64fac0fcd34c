"""Defaults shared by the jobs, importable without Beam (CLIs build their parsers from them)."""

DEFAULT_BATCH_SIZE = 32
# Well above any photo (a 61 MP camera JPEG is ~30 MB) and far below worker memory.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_PROGRESS_INTERVAL_S = 30.0
