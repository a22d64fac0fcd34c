"""cloudbuild.yaml, the Dockerfile and the flex templates cannot run here: check they are consistent with the code."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from beam_jobs.flex_launcher import to_cli_args
from brandlens.cli import build_parser
from tests.conftest import REPO

BUILT_INS = {"PROJECT_ID": "my-project", "BUILD_ID": "b-123", "SHORT_SHA": "abc1234"}
CONFIGS = {
    "bottlenecks": ("beam_jobs.bottlenecks.config", "BottleneckConfig"),
    "score": ("beam_jobs.scoring.config", "ScoringConfig"),
    "search": ("trainer.config", "SearchConfig"),
}


@pytest.fixture(scope="module")
def build():
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def _substitute(text: str, values: dict) -> str:
    for _ in range(3):
        text = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)
    return text


def _subcommand(name: str):
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions if a.choices)
    return action.choices[name]


def test_every_step_names_an_image_and_defined_substitutions(build):
    values = {**BUILT_INS, **build["substitutions"]}
    ids = [step["id"] for step in build["steps"]]
    assert len(ids) == len(set(ids))
    for step in build["steps"]:
        assert step.get("name"), step
        assert "args" in step and all(isinstance(a, str) for a in step["args"]), step["id"]
        for text in [step["name"], *step["args"]]:
            assert "$" not in _substitute(text, values), (step["id"], text)
    assert set(ids) >= {"test", "build-image", "push-image", "backbone", "bottlenecks", "train", "score"}
    assert build["images"] == ["${_IMAGE}"]


def test_brandlens_steps_are_real_commands_with_valid_settings(build):
    import importlib

    values = {**BUILT_INS, **build["substitutions"]}
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
            assert args.runner == "DataflowRunner" and args.sdk_container_image.endswith(":abc1234")


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
