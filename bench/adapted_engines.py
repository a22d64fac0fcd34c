"""An export with adapted blocks on the scoring job's engines: its SavedModel against its whole ``score_images``
converted to TFLite, at the model call.

    PYTHONPATH=$PWD .venv/bin/python -m bench.adapted_engines --model EXPORT [--rounds 8] [--batch 32]

The recommended recipes (``--adapt blocks``) export no backbone + ``head/`` split, so the scoring job runs the
whole signature on TFLite (``beam_jobs.scoring.model.ScoringModel``). Both engines score the same batch of
random prepared images, alternating which goes first each round; medians. Also the largest difference of
every numeric output. Decoding is left out. Writes ``bench/results/adapted_engines.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from bench.common import REPO

RESULTS = REPO / "bench" / "results"


def measure(export: str, rounds: int, batch: int) -> dict:
    from beam_jobs.scoring.model import ScoringModel
    from brandlens import engines
    from schemas import model as contract

    models = {name: ScoringModel(export, name) for name in (engines.SAVEDMODEL, engines.TFLITE)}
    for model in models.values():
        model.load(contract.SERVING_DIR)
    if models[engines.TFLITE].engine != engines.TFLITE:
        raise SystemExit(f"{export} is scored on its SavedModel, not TFLite (see the log): nothing to compare")
    size = models[engines.SAVEDMODEL].card.input_size
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    outputs = {name: model.score_images(images) for name, model in models.items()}  # first calls trace and allocate
    diffs = {key: float(np.max(np.abs(outputs[engines.TFLITE][key] - value)))
             for key, value in outputs[engines.SAVEDMODEL].items() if value.dtype != object}
    labels_equal = bool(np.all(outputs[engines.TFLITE][contract.OUT_LABEL] == outputs[engines.SAVEDMODEL][contract.OUT_LABEL]))
    seconds = {name: [] for name in models}
    for r in range(rounds):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            started = time.perf_counter()
            models[name].score_images(images)
            seconds[name].append(time.perf_counter() - started)
    median = {name: float(np.median(values)) for name, values in seconds.items()}
    return {"export": export, "version_id": models[engines.SAVEDMODEL].card.version_id, "batch": batch, "rounds": rounds,
            "images_per_s": {name: batch / value for name, value in median.items()},
            "tflite_vs_savedmodel": median[engines.SAVEDMODEL] / median[engines.TFLITE], "max_abs_diff": diffs,
            "labels_equal": labels_equal, "seconds": seconds,
            "command": "PYTHONPATH=$PWD .venv/bin/python -m bench.adapted_engines " + " ".join(sys.argv[1:])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export with adapted blocks (brandlens train --adapt blocks)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    result = measure(args.model, args.rounds, args.batch)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "adapted_engines.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    ips, diffs = result["images_per_s"], result["max_abs_diff"]
    (RESULTS / "adapted_engines.md").write_text(
        "# An adapted-blocks export on the scoring job's engines (bench/adapted_engines.py)\n\n"
        f"`{result['command']}`; model `{result['version_id']}`, batch {result['batch']}, {result['rounds']} rounds "
        "alternating, medians, decoding not included.\n\n"
        "| engine | images/s |\n|---|---:|\n"
        f"| SavedModel (score_images) | {ips['savedmodel']:.1f} |\n"
        f"| TFLite (the whole score_images converted) | {ips['tflite']:.1f} |\n"
        f"| **TFLite / SavedModel** | **{result['tflite_vs_savedmodel']:.2f}** |\n\n"
        "Largest difference per output: " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(diffs.items()))
        + f"; labels equal: {result['labels_equal']}.\n")
    print(f"tflite / savedmodel: {result['tflite_vs_savedmodel']:.2f} ({ips['tflite']:.1f} vs {ips['savedmodel']:.1f} "
          f"images/s); max diffs {diffs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
