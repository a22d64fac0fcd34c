"""What evidence maps cost on the scoring job's own model path, at the model call.

    PYTHONPATH=$PWD .venv/bin/python -m bench.maps_cost --model EXPORT [--rounds 8] [--batch 32]

``ScoringModel(export, tflite).score_images`` (the job's path: the whole ``score_images`` on TFLite, scores, maps
and boxes in one interpreter call) and the split path it falls back to (the backbone's final map on TFLite, then
the export's ``head/`` ``score_maps``) against the backbone's embedding on TFLite through ``head/``'s
``serving_default`` (scores only), on the same batch, alternating the order each round; the ratio of the median
times is maps on / off in images per second. Decoding is left out, so the ratio is a lower bound for the job's. Writes ``bench/results/maps_cost.json`` and ``.md``.
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

    model = ScoringModel(export, engines.TFLITE)
    model.load(contract.SERVING_DIR)
    if model.engine != engines.TFLITE or model._whole is None:
        raise SystemExit(f"{export} is not scored whole on TFLite (see the log): nothing to compare")
    split = ScoringModel(export, engines.TFLITE, whole=False)  # the fallback, measured beside the job's path
    split.load(contract.SERVING_DIR)
    size = model.card.input_size
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    runs = {"maps_on": lambda: model.score_images(images),
            "maps_on_split": lambda: split.score_images(images),
            "maps_off": lambda: split.score_embeddings(split._backbone_engine().embed(images))}
    for run in runs.values():
        run()  # first calls trace and allocate
    seconds = {name: [] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            started = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - started)
    median = {name: float(np.median(values)) for name, values in seconds.items()}
    return {"export": export, "version_id": model.card.version_id, "batch": batch, "rounds": rounds,
            "images_per_s": {name: batch / value for name, value in median.items()},
            "maps_on_vs_off": median["maps_off"] / median["maps_on"],
            "split_maps_on_vs_off": median["maps_off"] / median["maps_on_split"], "seconds": seconds,
            "command": "PYTHONPATH=$PWD .venv/bin/python -m bench.maps_cost " + " ".join(sys.argv[1:])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export (brandlens train --output)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    result = measure(args.model, args.rounds, args.batch)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "maps_cost.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    ips = result["images_per_s"]
    (RESULTS / "maps_cost.md").write_text(
        "# Evidence maps on the scoring job's TFLite path (bench/maps_cost.py)\n\n"
        f"`{result['command']}`; model `{result['version_id']}`, batch {result['batch']}, {result['rounds']} rounds "
        "alternating, medians, decoding not included.\n\n"
        "| path | images/s |\n|---|---:|\n"
        f"| maps on, the job's path: the whole score_images on TFLite | {ips['maps_on']:.1f} |\n"
        f"| maps on, its fallback: final map on TFLite -> head/ score_maps | {ips['maps_on_split']:.1f} |\n"
        f"| maps off: embedding on TFLite -> head/ serving_default | {ips['maps_off']:.1f} |\n"
        f"| **maps on / off** (goal >= 0.9) | **{result['maps_on_vs_off']:.3f}** |\n"
        f"| fallback maps on / off | {result['split_maps_on_vs_off']:.3f} |\n")
    print(f"maps on / off: {result['maps_on_vs_off']:.3f} ({ips['maps_on']:.1f} vs {ips['maps_off']:.1f} images/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
