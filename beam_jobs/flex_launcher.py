"""Dataflow flex-template entry point: ``--job=bottlenecks|score|rescore`` plus that command's flags.

Dataflow passes the template's parameters and its own pipeline options
(``--project``, ``--region``, ``--temp_location``, ...) as flags; flags the
command does not define are handed to Beam unchanged.

Workers get the launcher's own image: it is installed there, and the image
names itself in ``$BRANDLENS_WORKER_IMAGE`` (./Dockerfile, set by
cloudbuild.yaml), which the runner preset turns into ``--sdk_container_image``
unless the template run passes ``sdk_container_image`` or another code flag
(:mod:`beam_jobs.common.worker_code`).
"""

from __future__ import annotations

import argparse
import sys

JOBS = ("bottlenecks", "score", "rescore")


def to_cli_args(argv: list[str]) -> list[str]:
    """Template flags -> ``brandlens`` arguments (the job's own flags, the rest as --beam-arg)."""
    from brandlens.cli import build_parser

    head = argparse.ArgumentParser(add_help=False)
    head.add_argument("--job", choices=JOBS, required=True)
    known, rest = head.parse_known_args(argv)
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)).choices[known.job]
    actions = {opt: action for action in sub._actions for opt in action.option_strings}
    args = [known.job, "--runner", "DataflowRunner"]
    i = 0
    while i < len(rest):
        name, has_value, value = rest[i].partition("=")
        action = actions.get(name.replace("_", "-"))
        if action is None:
            args.append(f"--beam-arg={rest[i]}")
        else:
            takes_value = action.nargs != 0
            if takes_value and not has_value:
                i += 1
                value = rest[i]
            if action.dest == "runner":
                args[2] = value
            else:
                args.append(f"{action.option_strings[0]}={value}" if takes_value else action.option_strings[0])
        i += 1
    return args


def main(argv: list[str] | None = None) -> int:
    from brandlens.cli import main as cli_main

    return cli_main(to_cli_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
