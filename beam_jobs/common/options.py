"""Beam runner presets as a typed config, turned into PipelineOptions in one place.

Presets: ``DirectRunner`` (default), ``PortableRunner`` (a job service such as
Beam's local one, the path Flink also takes), ``FlinkRunner`` and
``DataflowRunner``. Each has its own flags, checked before anything runs; any
other Beam flag passes through unchanged with ``--beam-arg``.

``DirectRunner`` runs on Beam's in-process batch engine, the FnApiRunner, named
explicitly: Beam 2.77's DirectRunner would first try to download and start the
Prism runner binary, which fails offline and, online, would run the jobs on
another engine than the one tested here.

Distributed runs always name the code their workers get
(:mod:`beam_jobs.common.worker_code`): the worker image, else a package of the
running version; a run that would ship none is refused.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from beam_jobs.common import worker_code
from brandlens.errors import ConfigError

DIRECT_RUNNER = "DirectRunner"
PORTABLE_RUNNER = "PortableRunner"
FLINK_RUNNER = "FlinkRunner"
DATAFLOW_RUNNER = "DataflowRunner"
RUNNERS = (DIRECT_RUNNER, PORTABLE_RUNNER, FLINK_RUNNER, DATAFLOW_RUNNER)
RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")
ENVIRONMENT_TYPES = ("LOOPBACK", "DOCKER", "PROCESS", "EXTERNAL")


@dataclass(frozen=True)
class RunnerConfig:
    runner: str = DIRECT_RUNNER
    direct_num_workers: int = 1
    direct_running_mode: str = "in_memory"
    temp_location: str | None = None
    extra_args: tuple[str, ...] = ()
    job_endpoint: str | None = None
    environment_type: str | None = None
    environment_config: str | None = None
    flink_master: str | None = None
    parallelism: int | None = None
    project: str | None = None
    region: str | None = None
    staging_location: str | None = None
    machine_type: str | None = None
    max_workers: int | None = None
    sdk_container_image: str | None = None
    job_name: str | None = None
    worker_package: str | None = None
    image_default: str | None = None  # the image this process runs in ($BRANDLENS_WORKER_IMAGE)

    def __post_init__(self):
        if self.runner not in RUNNERS:
            raise ConfigError(f"unknown runner {self.runner!r}; choose one of {', '.join(RUNNERS)}")
        if self.direct_running_mode not in RUNNING_MODES:
            raise ConfigError(f"unknown direct running mode {self.direct_running_mode!r}")
        if self.runner == PORTABLE_RUNNER and not self.job_endpoint:
            raise ConfigError("PortableRunner needs --job-endpoint (e.g. localhost:8099 of Beam's local job service)")
        if self.runner == DATAFLOW_RUNNER:
            missing = [flag for flag, value in (("--project", self.project), ("--region", self.region),
                                                 ("--temp-location", self.temp_location)) if not value]
            if missing:
                raise ConfigError(f"DataflowRunner needs {', '.join(missing)}")
            if not self.temp_location.startswith("gs://"):
                raise ConfigError(f"DataflowRunner needs a gs:// --temp-location, got {self.temp_location}")
        if self.sdk_container_image and self.environment_config and self.runner != DATAFLOW_RUNNER:
            raise ConfigError("give the worker image once: --sdk-container-image or --environment-config")
        if self.worker_package:
            worker_code.check_worker_package(self.worker_package)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("beam runner")
        group.add_argument("--runner", default=DIRECT_RUNNER, choices=RUNNERS, help="Beam runner (default %(default)s)")
        group.add_argument("--direct-num-workers", "--direct_num_workers", dest="direct_num_workers", type=int, default=1,
                           help="DirectRunner: parallel workers (default %(default)s; 0 = one per CPU)")
        group.add_argument("--direct-running-mode", "--direct_running_mode", dest="direct_running_mode",
                           choices=RUNNING_MODES, default="in_memory",
                           help="DirectRunner: in_memory, multi_threading or multi_processing (default %(default)s)")
        group.add_argument("--temp-location", default=None, help="Beam temp location (Dataflow: gs://bucket/tmp)")
        group.add_argument("--job-endpoint", default=None, help="PortableRunner: job service address, e.g. localhost:8099")
        group.add_argument("--environment-type", choices=ENVIRONMENT_TYPES, default=None,
                           help="Portable/Flink: how SDK workers start (LOOPBACK: in this process; DOCKER: the worker image)")
        group.add_argument("--environment-config", default=None, help="Portable/Flink: e.g. the worker image for DOCKER")
        group.add_argument("--flink-master", default=None, help="FlinkRunner: host:port of the Flink JobManager ([auto] = local)")
        group.add_argument("--parallelism", type=int, default=None, help="FlinkRunner: parallelism")
        group.add_argument("--project", default=None, help="DataflowRunner: GCP project")
        group.add_argument("--region", default=None, help="DataflowRunner: region, e.g. europe-west1")
        group.add_argument("--staging-location", default=None, help="DataflowRunner: gs:// staging folder (default: temp)")
        group.add_argument("--machine-type", default=None, help="DataflowRunner: worker machine type, e.g. n2-standard-4")
        group.add_argument("--max-workers", type=int, default=None, help="DataflowRunner: autoscaling limit")
        group.add_argument("--sdk-container-image", default=None,
                           help="Dataflow/Flink/Portable: worker image with brandlens installed (see Dockerfile; "
                                f"default ${worker_code.WORKER_IMAGE_ENV}, which that image sets to itself)")
        group.add_argument("--worker-package", default=None, metavar="FILE",
                           help="without a worker image: a brandlens wheel or sdist of this version for the workers, "
                                "local or gs:// (default: setup.py in a checkout, else the installed package packed "
                                "into a wheel at submit time)")
        group.add_argument("--job-name", default=None, help="Dataflow/Flink: job name")
        group.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="FLAG",
                           help="any other Beam pipeline flag, passed through; repeat as needed, "
                                "e.g. --beam-arg=--network=my-vpc")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunnerConfig":
        return cls(args.runner, args.direct_num_workers, args.direct_running_mode, args.temp_location, tuple(args.beam_args),
                   args.job_endpoint, args.environment_type, args.environment_config, args.flink_master, args.parallelism,
                   args.project, args.region, args.staging_location, args.machine_type, args.max_workers,
                   args.sdk_container_image, args.job_name, args.worker_package,
                   os.environ.get(worker_code.WORKER_IMAGE_ENV) or None)

    @property
    def is_local(self) -> bool:
        """Workers share this machine's files (local paths are fine for inputs and outputs)."""
        return self.runner == DIRECT_RUNNER or (self.runner == PORTABLE_RUNNER and self.environment_type == "LOOPBACK")

    def check_reachable(self, **paths: str | None) -> None:
        """Fail early when workers on other machines would be handed paths only this machine has."""
        if self.is_local:
            return
        from brandlens.fileio import is_remote

        local = [f"--{name.replace('_', '-')} {path}" for name, path in paths.items() if path and not is_remote(str(path))]
        if local:
            raise ConfigError(f"{self.runner} workers cannot read this machine's files: {', '.join(local)}; "
                              "use gs:// paths (artifacts: brandlens backbone --artifacts gs://bucket/artifacts)")

    def flags(self) -> list[str]:
        if self.runner == DIRECT_RUNNER:
            flags = ["--runner=FnApiRunner", f"--direct_num_workers={self.direct_num_workers}",
                     f"--direct_running_mode={self.direct_running_mode}"]
        else:
            flags = [f"--runner={self.runner}"]
        optional = {
            "temp_location": self.temp_location, "job_endpoint": self.job_endpoint,
            "environment_type": self.environment_type, "environment_config": self.environment_config,
            "flink_master": self.flink_master, "parallelism": self.parallelism, "project": self.project,
            "region": self.region, "staging_location": self.staging_location, "machine_type": self.machine_type,
            "max_num_workers": self.max_workers, "job_name": self.job_name,
        }
        flags += [f"--{name}={value}" for name, value in optional.items() if value is not None]
        return flags + self.worker_code_flags() + list(self.extra_args)

    def _image_flags(self, image: str) -> list[str]:
        """Dataflow takes the worker image as --sdk_container_image; portable runners as a DOCKER environment."""
        if self.runner == DATAFLOW_RUNNER:
            return [f"--sdk_container_image={image}"]
        if self.environment_type not in (None, "DOCKER"):
            raise ConfigError(f"a worker image needs --environment-type DOCKER, not {self.environment_type}")
        return ([] if self.environment_type else ["--environment_type=DOCKER"]) + [f"--environment_config={image}"]

    def _environment_has_code(self) -> bool:
        if any(a.split("=", 1)[0] in worker_code.CODE_FLAGS for a in self.extra_args):
            return True
        return self.runner != DATAFLOW_RUNNER and (self.environment_type in ("PROCESS", "EXTERNAL") or
                                                   (self.environment_type == "DOCKER" and bool(self.environment_config)))

    def worker_code_flags(self) -> list[str]:
        """The flags that give distributed workers brandlens (see :mod:`beam_jobs.common.worker_code`); may pack a wheel."""
        if self.is_local:
            return []
        if self.sdk_container_image:
            return self._image_flags(self.sdk_container_image)
        if self._environment_has_code():
            return []
        if self.worker_package:
            return [f"--extra_package={self.worker_package}"]
        if self.image_default:
            return self._image_flags(self.image_default)
        setup_file = worker_code.checkout_setup_file()
        if setup_file:
            return [f"--setup_file={setup_file}"]
        return [f"--extra_package={worker_code.pack_installed_wheel()}"]

    def pipeline_options(self):
        from apache_beam.options.pipeline_options import PipelineOptions

        return PipelineOptions(self.flags())
