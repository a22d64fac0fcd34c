"""cloudbuild.yaml, the Dockerfile and the flex templates cannot run here: check they are consistent with the code.

The build file is read as a manual ``gcloud builds submit`` sees it: only the
substitutions every build has are set; the commit ones (SHORT_SHA, ...) exist
only in triggered builds and are empty otherwise. Dataflow's worker flags are
checked from a wheel installed outside the repository.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from beam_jobs.common.options import RunnerConfig
from beam_jobs.flex_launcher import to_cli_args
from brandlens import __version__
from brandlens.cli import build_parser
from tests.conftest import REPO

BUILD_ID = "6f1c2d9e-4b7a-4c1e-9d55-0b3e8f7a1c20"
BUILT_INS = {"PROJECT_ID": "my-project", "BUILD_ID": BUILD_ID, "PROJECT_NUMBER": "123456789", "LOCATION": "europe-west1",
             "SERVICE_ACCOUNT_EMAIL": "sa@my-project.iam.gserviceaccount.com",
             "SERVICE_ACCOUNT": "projects/my-project/serviceAccounts/sa@my-project.iam.gserviceaccount.com"}
TRIGGER_ONLY = {name: "" for name in ("TRIGGER_NAME", "COMMIT_SHA", "REVISION_ID", "SHORT_SHA", "REPO_NAME", "REPO_FULL_NAME",
                                      "BRANCH_NAME", "TAG_NAME", "REF_NAME", "TRIGGER_BUILD_CONFIG_PATH")}
WORKER_IMAGE_ENV = "BRANDLENS_WORKER_IMAGE"  # beam_jobs.common.worker_code, which the Dockerfile sets
DOCKER_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DATAFLOW_JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$")
CONFIGS = {
    "bottlenecks": ("beam_jobs.bottlenecks.config", "BottleneckConfig"),
    "score": ("beam_jobs.scoring.config", "ScoringConfig"),
    "search": ("trainer.config", "SearchConfig"),
}


@pytest.fixture(scope="module")
def build():
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def _manual(build, build_id: str = BUILD_ID) -> dict:
    return {**TRIGGER_ONLY, **BUILT_INS, "BUILD_ID": build_id, **build["substitutions"]}


def _substitute(text: str, values: dict) -> str:
    for _ in range(3):
        text = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)
    return text


def _subcommand(name: str):
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions if a.choices)
    return action.choices[name]


def test_every_step_names_an_image_and_defined_substitutions(build):
    values = {**BUILT_INS, **build["substitutions"]}  # no commit substitutions: a manual submit has none
    ids = [step["id"] for step in build["steps"]]
    assert len(ids) == len(set(ids))
    for step in build["steps"]:
        assert step.get("name"), step
        assert "args" in step and all(isinstance(a, str) for a in step["args"]), step["id"]
        for text in [step["name"], *step["args"]]:
            assert "$" not in _substitute(text, values), (step["id"], text)
    assert set(ids) >= {"test", "artifact-registry", "build-image", "push-image", "backbone", "bottlenecks", "train", "score"}
    assert build["images"] == ["${_IMAGE}"]


def test_a_manual_submit_gets_a_defined_image_tag_and_job_names(build):
    names = {}
    for build_id in (BUILD_ID, "0d9a7c55-1e2f-4a3b-8c6d-5e4f3a2b1c0d"):
        values = _manual(build, build_id)
        image = _substitute("${_IMAGE}", values)
        repository, _, tag = image.rpartition(":")
        assert repository == "europe-west1-docker.pkg.dev/my-project/brandlens/brandlens-worker" and DOCKER_TAG.match(tag), image
        jobs = [_substitute(step["args"][step["args"].index("--job-name") + 1], values)
                for step in build["steps"] if "--job-name" in step.get("args", [])]
        assert len(jobs) == 2 and all(DATAFLOW_JOB_NAME.match(job) for job in jobs), jobs
        names[build_id] = {image, *jobs}
    first, second = names.values()
    assert not first & second  # two manual submits never reuse an image tag or a job name


def test_the_artifact_registry_repository_is_created_before_the_push(build):
    ids = [step["id"] for step in build["steps"]]
    assert ids.index("artifact-registry") < ids.index("push-image")
    step = build["steps"][ids.index("artifact-registry")]
    command = " ".join(step["args"])
    assert "repositories describe ${_REPOSITORY} --location=${_REGION}" in command
    assert "repositories create ${_REPOSITORY} --repository-format=docker --location=${_REGION}" in command
    assert "${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPOSITORY}/" in build["substitutions"]["_IMAGE"]


def test_the_score_step_writes_the_readme_layout(build):
    from beam_jobs.scoring.config import ScoringConfig

    values = _manual(build)
    step = next(s for s in build["steps"] if s["id"] == "score")
    config = ScoringConfig.from_args(build_parser().parse_args([_substitute(a, values) for a in step["args"]]))
    bucket = build["substitutions"]["_BUCKET"]
    readme = (REPO / "README.md").read_text()
    prefix = re.search(r"hive_partition_uri_prefix = '(gs://[^']+)'", readme).group(1)
    layout = prefix.split("/", 3)[3]  # gs://my-bucket/<layout>
    assert config.out.scores_dir == f"gs://{bucket}/{layout}" == f"gs://{bucket}/archive/scores"


def test_brandlens_steps_are_real_commands_with_valid_settings(build):
    import importlib

    values = _manual(build)
    steps = [s for s in build["steps"] if s.get("entrypoint") == "brandlens"]
    assert {s["args"][0] for s in steps} == {"backbone", "bottlenecks", "search", "score"}
    for step in steps:
        argv = [_substitute(a, values) for a in step["args"]]
        args = build_parser().parse_args(argv)
        parsed = {str(v) for v in vars(args).values()}
        assert all(a in parsed for a in argv if a.startswith("gs://")), argv  # no gs:// mangled into a local Path
        if argv[0] in CONFIGS:
            module, cls = CONFIGS[argv[0]]
            getattr(importlib.import_module(module), cls).from_args(args)  # runs every config check
        if "--runner" in argv:
            assert args.runner == "DataflowRunner" and args.sdk_container_image.endswith(f":{BUILD_ID}")


def test_make_test_and_docker_steps_match_the_repository(build):
    steps = {s["id"]: s for s in build["steps"]}
    assert steps["test"]["entrypoint"] == "make" and steps["test"]["args"] == ["test"]
    assert re.search(r"^test:", (REPO / "Makefile").read_text(), re.M)
    dockerfile = (REPO / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for source in line.split():
            assert (REPO / source).exists(), source
    launcher = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=/brandlens/(\S+)", dockerfile).group(1)
    assert (REPO / launcher).is_file()
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in dockerfile
    beam = re.search(r"apache-beam==([\d.]+)", (REPO / "constraints.txt").read_text()).group(1)
    assert f"ARG BEAM_VERSION={beam}" in dockerfile


def test_the_launcher_base_is_pinned_to_the_image_python(build):
    dockerfile = (REPO / "Dockerfile").read_text()
    python = re.search(r"^ARG PYTHON_VERSION=(3\.\d+)$", dockerfile, re.M).group(1)
    launcher = re.search(r"^ARG LAUNCHER_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    name, _, tag = launcher.rpartition(":")
    assert name == f"gcr.io/dataflow-templates-base/python{python.replace('.', '')}-template-launcher-base", launcher
    assert re.fullmatch(r"flex_templates_base_image_release_\d{8}_RC\d\d", tag), tag  # a dated release, never latest
    assert re.search(r"^FROM \$\{LAUNCHER_IMAGE\} AS launcher$", dockerfile, re.M)
    assert next(s for s in build["steps"] if s["id"] == "test")["name"] == f"python:{python}"


def _repo_files(*tops: str) -> list[str]:
    """The repository's files: git's list in a clone; else (Cloud Build's workspace has no .git) the tree less .gitignore."""
    if (REPO / ".git").exists():
        return subprocess.run(["git", "ls-files", *tops], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    ignored = [line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines() if line.strip()]
    files = []
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d != ".git" and not any(fnmatch.fnmatchcase(d, pattern) for pattern in ignored)]
        rel = Path(folder).relative_to(REPO)
        files += [(rel / n).as_posix() for n in names if not any(fnmatch.fnmatchcase(n, pattern) for pattern in ignored)]
    return sorted(f for f in files if not tops or f.split("/")[0] in tops)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule as the file uses it: the last pattern matching the path or a folder above it decides."""
    parents = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 2)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(fnmatch.fnmatchcase(p, pattern.lstrip("!")) for p in parents):
            ignored = not negated
    return ignored


def test_the_build_context_is_what_the_dockerfile_copies():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = {source for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M) for source in line.split()}
    for name in [".venv/bin/python", ".git/HEAD", "demo-output/archive/x.parquet", "build/lib/a.py", "dist/b.whl",
                 "brandlens.egg-info/PKG-INFO", "tests/conftest.py", "brandlens/__pycache__/cli.cpython-311.pyc",
                 ".pytest_cache/v", "bench/results/x.json"]:
        assert _dockerignored(name, patterns), name
    tracked = _repo_files()
    context = {f for f in tracked if not _dockerignored(f, patterns)}
    assert context == {f for f in tracked if f.split("/")[0] in copied}, context ^ {f for f in tracked if f.split("/")[0] in copied}


@pytest.mark.parametrize("template, job", [("bottlenecks", "bottlenecks"), ("score", "score")])
def test_flex_templates_name_real_parameters(build, template, job):
    metadata = json.loads((REPO / "deploy" / "flex-templates" / f"{template}.json").read_text())
    flags = {opt for action in _subcommand(job)._actions for opt in action.option_strings}
    for parameter in metadata["parameters"]:
        if parameter["name"] != "job":
            assert "--" + parameter["name"].replace("_", "-") in flags, parameter["name"]
    steps = [s for s in build["steps"] if s["id"] == f"flex-template-{template}"]
    assert steps and f"--metadata-file=deploy/flex-templates/{template}.json" in steps[0]["args"]


def test_flex_launcher_turns_template_flags_into_a_command():
    argv = to_cli_args(["--job=score", "--input=gs://b/posts.csv", "--model=gs://b/m", "--output=gs://b/out", "--project=p",
                        "--region=r", "--temp_location=gs://b/tmp", "--multi_crop=2", "--write_embedding",
                        "--service_account_email=sa@p.iam.gserviceaccount.com"])
    args = build_parser().parse_args(argv)
    assert (args.command, args.runner, args.project, args.temp_location, args.multi_crop, args.write_embedding) == \
        ("score", "DataflowRunner", "p", "gs://b/tmp", 2, True)
    assert args.beam_args == ["--service_account_email=sa@p.iam.gserviceaccount.com"]


def test_flex_template_workers_get_the_launcher_image(build, monkeypatch):
    image = _substitute("${_IMAGE}", _manual(build))
    steps = {s["id"]: s for s in build["steps"]}
    assert "WORKER_IMAGE=${_IMAGE}" in steps["build-image"]["args"]
    assert re.search(rf"^ENV {WORKER_IMAGE_ENV}=\$\{{WORKER_IMAGE\}}$", (REPO / "Dockerfile").read_text(), re.M)
    monkeypatch.setenv(WORKER_IMAGE_ENV, image)
    template = ["--job=score", "--input=gs://b/posts.csv", "--model=gs://b/m", "--output=gs://b/out", "--project=p",
                "--region=r", "--temp_location=gs://b/tmp"]
    flags = RunnerConfig.from_args(build_parser().parse_args(to_cli_args(template))).flags()
    assert f"--sdk_container_image={image}" in flags and not any(f.startswith(("--setup_file", "--extra_package")) for f in flags)
    given = RunnerConfig.from_args(build_parser().parse_args(to_cli_args(template + ["--sdk_container_image=other:1"]))).flags()
    assert [f for f in given if "container_image" in f] == ["--sdk_container_image=other:1"]


_FLAGS_SCRIPT = """
import json, sys
from beam_jobs.common.options import RunnerConfig
from brandlens.errors import ConfigError
import beam_jobs, brandlens
dataflow = dict(runner="DataflowRunner", temp_location="gs://b/tmp", project="p", region="r")


def flags(**kwargs):
    try:
        return RunnerConfig(**{**dataflow, **kwargs}).flags()
    except ConfigError as exc:
        return "refused: " + str(exc)


out = {"module": beam_jobs.__file__, "version": brandlens.__version__, "default": flags(),
       "image": flags(sdk_container_image="europe-docker.pkg.dev/p/r/brandlens-worker:1"),
       "package": flags(worker_package="gs://b/dist/brandlens-%s-py3-none-any.whl" % brandlens.__version__),
       "old_package": flags(worker_package="gs://b/dist/brandlens-0.0.1-py3-none-any.whl"),
       "flink": flags(runner="FlinkRunner", flink_master="flink:8081", temp_location=None, project=None, region=None)}
if "--stage" in sys.argv:
    import tempfile
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.stager import Stager
    from apache_beam.portability.api import beam_runner_api_pb2
    resources = Stager.create_job_resources(PipelineOptions(out["default"]), tempfile.mkdtemp(),
                                            log_submission_env_dependencies=False)
    out["staged"] = sorted(beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(r.role_payload).staged_name
                           for r in resources)
print(json.dumps(out))
"""


def _run_installed(site: Path, cwd: Path, *args: str) -> dict:
    """The option builder in a fresh process that imports brandlens from ``site`` only (not this checkout)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    env.pop(WORKER_IMAGE_ENV, None)
    result = subprocess.run([sys.executable, "-c", _FLAGS_SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """``pip wheel --no-deps`` of this checkout, installed into a folder outside it (TF and Beam come from the venv)."""
    root = tmp_path_factory.mktemp("wheel-install")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(REPO)], check=True,
                   timeout=300)
    wheel, = (root / "dist").glob("brandlens-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(root / "site"), str(wheel)], check=True, timeout=300)
    return root, wheel


@pytest.mark.slow
def test_dataflow_workers_get_the_installed_version_from_a_wheel_install(wheel_install, tmp_path):
    root, wheel = wheel_install
    out = _run_installed(root / "site", tmp_path, "--stage")
    assert Path(out["module"]).is_relative_to(root / "site") and out["version"] == __version__
    assert not any(f.startswith("--setup_file") for f in out["default"])
    packed = Path(next(f for f in out["default"] if f.startswith("--extra_package=")).split("=", 1)[1])
    assert packed.name == f"brandlens-{__version__}-py3-none-any.whl" and not packed.is_relative_to(REPO)
    assert out["staged"] == sorted(["extra_packages.txt", packed.name])  # what Beam stages for the workers
    with zipfile.ZipFile(wheel) as built, zipfile.ZipFile(packed) as repacked:
        assert sorted(repacked.namelist()) == sorted(built.namelist())
        for name in built.namelist():
            if not name.endswith("/RECORD"):
                assert repacked.read(name) == built.read(name), name
    # what a worker does with it: pip installs it, and the jobs import from it
    subprocess.run([sys.executable, "-m", "pip", "-q", "install", "--no-deps", "--target", str(tmp_path / "worker"),
                    str(packed)], check=True, timeout=300)
    assert _run_installed(tmp_path / "worker", tmp_path)["version"] == __version__

    assert "--sdk_container_image=europe-docker.pkg.dev/p/r/brandlens-worker:1" in out["image"]
    assert not any(f.startswith(("--extra_package", "--setup_file")) for f in out["image"])
    assert f"--extra_package=gs://b/dist/brandlens-{__version__}-py3-none-any.whl" in out["package"]
    assert any(f.startswith("--extra_package=") for f in out["flink"])  # Flink's default DOCKER image has no brandlens
    assert out["old_package"].startswith("refused: ") and "is brandlens 0.0.1" in out["old_package"]


@pytest.mark.slow
def test_a_distributed_run_that_would_ship_no_code_is_refused(wheel_install, tmp_path):
    import shutil

    root, _ = wheel_install
    site = tmp_path / "site"
    shutil.copytree(root / "site", site)
    record, = site.glob("brandlens-*.dist-info/RECORD")
    record.unlink()  # an install without a file list: nothing to pack
    out = _run_installed(site, tmp_path)
    assert out["default"].startswith("refused: ") and "--sdk-container-image" in out["default"], out
    assert "--sdk_container_image=europe-docker.pkg.dev/p/r/brandlens-worker:1" in out["image"]  # an image needs no package


def test_the_sdist_carries_what_its_tests_need(tmp_path):
    """Built the way ``pip``/``build`` do (setuptools' PEP 517 hook); its test suite must be able to run."""
    script = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    import tarfile

    with tarfile.open(tmp_path / result.stdout.strip().splitlines()[-1]) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    tracked = _repo_files("tests", "bench")
    needed = {"tests/conftest.py", "pytest.ini", "constraints.txt", "Makefile", "setup.py"}
    needed |= {f for f in tracked if f.endswith(".py")}
    assert needed <= members, sorted(needed - members)
    assert not any("__pycache__" in m or m.endswith(".pyc") for m in members)
