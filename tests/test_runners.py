"""Runner presets, and the jobs on the PortableRunner (Beam's local job service, the path Flink takes).

The portable runs must produce exactly what the DirectRunner produces.
"""

from __future__ import annotations

import datetime as dt
import glob
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.common.options import RunnerConfig
from brandlens.errors import ConfigError

SCORED_AT = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)


def test_presets_validate_and_build_flags():
    with pytest.raises(ConfigError, match="job-endpoint"):
        RunnerConfig("PortableRunner")
    with pytest.raises(ConfigError, match="--project, --region"):
        RunnerConfig("DataflowRunner", temp_location="gs://b/tmp")
    with pytest.raises(ConfigError, match="gs://"):
        RunnerConfig("DataflowRunner", project="p", region="r", temp_location="/tmp")
    with pytest.raises(ConfigError, match="unknown runner"):
        RunnerConfig("SparkRunner")
    flink = RunnerConfig("FlinkRunner", flink_master="flink:8081", parallelism=4, environment_type="DOCKER",
                         environment_config="europe-docker.pkg.dev/p/r/brandlens-worker:1").flags()
    assert flink[:5] == ["--runner=FlinkRunner", "--environment_type=DOCKER",
                         "--environment_config=europe-docker.pkg.dev/p/r/brandlens-worker:1", "--flink_master=flink:8081", "--parallelism=4"]
    dataflow = RunnerConfig("DataflowRunner", temp_location="gs://b/tmp", project="p", region="europe-west1",
                            machine_type="n2-standard-4", max_workers=20).flags()
    assert "--max_num_workers=20" in dataflow and "--machine_type=n2-standard-4" in dataflow
    assert any(f.startswith("--setup_file=") and f.endswith("setup.py") for f in dataflow)
    image = RunnerConfig("DataflowRunner", temp_location="gs://b/tmp", project="p", region="r", sdk_container_image="img").flags()
    assert "--sdk_container_image=img" in image and not any(f.startswith("--setup_file") for f in image)


@pytest.fixture(scope="module")
def job_endpoint(tmp_path_factory):
    """Beam's Python local job service in its own process, as a Flink job server would be."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("job-service") / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(f"job service exited: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield f"localhost:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def _portable(endpoint: str) -> RunnerConfig:
    return RunnerConfig("PortableRunner", job_endpoint=endpoint, environment_type="LOOPBACK")


def _examples(folder) -> list[bytes]:
    records = []
    for path in sorted(glob.glob(f"{folder}/*.tfrecord.gz")):
        import tensorflow as tf

        records += [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    return sorted(records)


def _transformed(folder) -> dict:
    from tensorflow.core.example import example_pb2

    out = {}
    for data in _examples(folder):
        f = example_pb2.Example.FromString(data).features.feature
        key = (f["content_hash"].bytes_list.value[0], f["variant"].bytes_list.value[0], f["split"].bytes_list.value[0])
        out[key] = (f["label_id"].int64_list.value[0], np.array(f["embedding_scaled"].float_list.value))
    return out


def test_bottleneck_job_on_portable_runner_equals_direct(sample_bottlenecks, artifact_root, job_endpoint, tmp_path):
    import json

    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run
    from brandlens.config import BackboneConfig

    sample = sample_bottlenecks.parent / "sample"
    manifest = sample / "manifest-with-splits.csv"
    config = BottleneckConfig(input=str(manifest), output=str(tmp_path / "portable"), base_uri=str(sample), augment=1,
                              cache=str(tmp_path / "cache"), backbone=BackboneConfig("efficientnet_lite0", artifact_root),
                              runner=_portable(job_endpoint))
    summary = run(config)
    direct = json.loads((sample_bottlenecks / "summary.json").read_text())
    assert summary["reconciliation"]["ok"]
    for key in ("read", "written", "examples", "dead_lettered", "duplicates"):
        assert summary["counts"][key] == direct["counts"][key], key
    assert _examples(tmp_path / "portable" / "examples") == _examples(sample_bottlenecks / "examples")
    assert summary["vocabulary"] == direct["vocabulary"]
    portable, reference = (_transformed(folder / "transformed") for folder in (tmp_path / "portable", sample_bottlenecks))
    assert portable.keys() == reference.keys()
    for key, (label_id, scaled) in reference.items():  # the analysers may sum in another order: float noise only
        assert portable[key][0] == label_id
        np.testing.assert_allclose(portable[key][1], scaled, atol=1e-5)


def test_scoring_job_on_portable_runner_equals_direct(sample_bottlenecks, sample_model, job_endpoint, tmp_path):
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run

    posts = sample_bottlenecks.parent / "sample" / "posts.csv"
    outputs = {}
    for name, runner in (("direct", RunnerConfig()), ("portable", _portable(job_endpoint))):
        summary = run(ScoringConfig(input=str(posts), model=str(sample_model), runner=runner,
                                    out=OutputConfig(str(tmp_path / name), rows_per_file=25, scored_at=SCORED_AT)))
        assert summary["reconciliation"]["ok"] and summary["counts"]["scored"] == 60
        outputs[name] = sorted(pq.read_table(str(tmp_path / name / "scores"), partitioning="hive").to_pylist(),
                               key=lambda r: r["post_id"])
        files = sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name / "scores").rglob("*.parquet"))
        outputs[name + "-files"] = files
    assert outputs["portable"] == outputs["direct"]
    assert outputs["portable-files"] == outputs["direct-files"]


def test_distributed_runners_refuse_local_paths_before_running(tmp_path):
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run as run_bottlenecks
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run as run_scoring
    from brandlens.config import BackboneConfig

    dataflow = RunnerConfig("DataflowRunner", temp_location="gs://b/tmp", project="p", region="r")
    with pytest.raises(ConfigError, match=r"DataflowRunner workers cannot read this machine's files: --input /.*--artifacts"):
        run_bottlenecks(BottleneckConfig(input=str(tmp_path / "m.csv"), output="gs://b/out", cache="gs://b/cache",
                                         backbone=BackboneConfig(artifact_root=str(tmp_path)), runner=dataflow))
    with pytest.raises(ConfigError, match="--model"):
        run_scoring(ScoringConfig(input="gs://b/posts.csv", model=str(tmp_path), out=OutputConfig("gs://b/scores"), runner=dataflow))
    assert not list(tmp_path.iterdir())
