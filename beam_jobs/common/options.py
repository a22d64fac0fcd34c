"""Beam runner settings as a typed config, turned into PipelineOptions in one place.

``DirectRunner`` (the default) runs on Beam's in-process batch engine, the
FnApiRunner, named explicitly: Beam 2.77's DirectRunner would first try to
download and start the Prism runner binary, which fails offline and, online,
would run our jobs on another engine than the one tested here. Any other Beam flag (``--project``, ``--region``,
``--setup_file`` for Dataflow) passes through unchanged with ``--beam-arg``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DIRECT_RUNNER = "DirectRunner"
RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")


@dataclass(frozen=True)
class RunnerConfig:
    runner: str = DIRECT_RUNNER
    direct_num_workers: int = 1
    direct_running_mode: str = "in_memory"
    temp_location: str | None = None
    extra_args: tuple[str, ...] = ()

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("beam runner")
        group.add_argument("--runner", default=DIRECT_RUNNER, help="Beam runner (default %(default)s; e.g. DataflowRunner)")
        group.add_argument("--direct-num-workers", "--direct_num_workers", dest="direct_num_workers", type=int, default=1,
                           help="DirectRunner parallelism (default %(default)s; 0 = one per CPU)")
        group.add_argument("--direct-running-mode", "--direct_running_mode", dest="direct_running_mode",
                           choices=RUNNING_MODES, default="in_memory", help="DirectRunner mode (default %(default)s)")
        group.add_argument("--temp-location", default=None, help="Beam temp location (needed by Dataflow, e.g. gs://bucket/tmp)")
        group.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="FLAG",
                           help="any other Beam pipeline flag, passed through; repeat as needed, "
                                "e.g. --beam-arg=--project=my-project --beam-arg=--region=europe-west1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunnerConfig":
        return cls(args.runner, args.direct_num_workers, args.direct_running_mode, args.temp_location, tuple(args.beam_args))

    def flags(self) -> list[str]:
        flags = [f"--runner={self.runner}"]
        if self.runner == DIRECT_RUNNER:
            flags = ["--runner=FnApiRunner", f"--direct_num_workers={self.direct_num_workers}",
                     f"--direct_running_mode={self.direct_running_mode}"]
        if self.temp_location:
            flags.append(f"--temp_location={self.temp_location}")
        return flags + list(self.extra_args)

    def pipeline_options(self):
        from apache_beam.options.pipeline_options import PipelineOptions

        return PipelineOptions(self.flags())
