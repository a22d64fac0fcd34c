"""Plots and the HTML error report: what a person looks at before trusting the model.

Figures are drawn on ``matplotlib.figure.Figure`` directly (Agg canvas), so no
global pyplot backend is touched in a process that other stages share.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import numpy as np

from brandlens.metrics import error_rows
from brandlens.thumbnails import error_table, thumbnail_data_uri
from trainer import evaluate as ev

log = logging.getLogger(__name__)

CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
THRESHOLD_PNG = "threshold.png"
ERRORS_HTML = "errors.html"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_curves(history: list[dict], path: Path, best_step: int | None = None) -> None:
    """Accuracy and cross-entropy over steps, training and validation: the study's curves."""
    fig = _figure(11, 4)
    steps = [row["step"] for row in history]
    for ax, metric in zip(fig.subplots(1, 2), ("accuracy", "cross_entropy")):
        for split, style in (("train", "-"), ("validation", "--")):
            ax.plot(steps, [row[f"{split}_{metric}"] for row in history], style, label=split)
        if best_step is not None:
            ax.axvline(best_step, color="grey", linewidth=0.8, linestyle=":", label=f"kept (step {best_step})")
        ax.set_xlabel("step")
        ax.set_title(metric.replace("_", "-"))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path)


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    matrix = np.asarray(matrix)
    size = max(4.0, 0.45 * len(labels) + 2.5)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(labels) <= 30:
        high = matrix.max() / 2 if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > high else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path)


def plot_threshold(scores: np.ndarray, y: np.ndarray, neither_index: int, chosen: dict, path: Path) -> None:
    """Validation brand precision and recall against the threshold, with the chosen one marked."""
    grid = np.linspace(0.0, 1.0, 101)
    precision, recall = [], []
    for t in grid:
        predicted = ev.apply_threshold(scores, neither_index, float(t))
        precision.append(ev.brand_precision(y, predicted, neither_index)[0])
        brands = y != neither_index
        recall.append(float(np.mean(predicted[brands] == y[brands])) if brands.any() else np.nan)
    fig = _figure(6, 4)
    ax = fig.subplots()
    ax.plot(grid, precision, label="brand precision")
    ax.plot(grid, recall, label="brand recall")
    ax.axhline(chosen["target_precision"], color="grey", linestyle=":", label="target precision")
    ax.axvline(chosen["threshold"], color="red", linewidth=0.8, label=f"threshold {chosen['threshold']:.3f}")
    ax.set_xlabel("threshold on the top brand score")
    ax.set_title("validation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)


def evidence_data_uri(data: bytes | None, row: dict, explain) -> str | None:
    """The photo with the predicted brand's heat map and the predicted and true brands' boxes (brandlens.overlay)."""
    if data is None:
        return None
    from brandlens.imaging import ImageDecodeError, decode_image
    from brandlens.overlay import png_bytes

    try:
        rgb = decode_image(data)
    except ImageDecodeError:
        return None
    image = explain(rgb, list(dict.fromkeys([row["predicted"], row["label"]])))
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def write_error_report(path: Path, rows: list[dict], image_root: Path | None, title: str, total: int,
                       explain=None) -> None:
    """``explain(rgb, labels) -> PIL image`` draws the evidence overlays; without it, plain thumbnails."""
    from trainer.data import read_bytes, resolve_uri

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}td{vertical-align:top;padding:6px;border-bottom:1px solid #ddd}"
             "img{max-width:160px}.score{font-family:monospace}.miss{color:#999}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{len(rows)} errors of {total} test images, most confident first.</p>"]
    by_uri = {row["uri"]: row for row in rows}
    if explain is None:
        picture = lambda uri: thumbnail_data_uri(read_bytes(resolve_uri(uri, image_root)))  # noqa: E731
    else:
        picture = lambda uri: evidence_data_uri(read_bytes(resolve_uri(uri, image_root)), by_uri[uri], explain)  # noqa: E731
    parts += error_table(rows, picture)
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def write_all(output: Path, data, run, image_root: Path | None, artifact: Path | None = None) -> None:
    """Curves, the test confusion matrix, the threshold plot (open world) and the error report.

    Given the backbone ``artifact``, the error report shows each photo's evidence (heat map, boxes).
    """
    from trainer.data import default_image_root

    plot_curves(run.fit.history, output / CURVES_PNG, run.fit.best_step)
    test_metrics = run.metrics["test"]
    plot_confusion(test_metrics["confusion_matrix"], data.labels, output / CONFUSION_PNG,
                   f"test: accuracy {test_metrics['accuracy']:.3f}")
    if run.threshold is not None:
        validation = data.splits["validation"]
        plot_threshold(run.scores["validation"], validation.y, data.neither_index, run.threshold, output / THRESHOLD_PNG)
    test = data.splits["test"]
    predicted = ev.apply_threshold(run.scores["test"], data.neither_index, run.threshold_value)
    rows = error_rows(run.scores["test"], test.y, predicted, data.labels, test.uri)
    explain = None
    if artifact is not None:
        from brandlens.backbones.artifact import load_backbone
        from brandlens.overlay import explain_with_backbone

        backbone, weights = load_backbone(artifact), run.fit.weights.as_float32()
        head = (data.scale, data.shift, weights.kernel, weights.bias)
        explain = lambda rgb, shown: explain_with_backbone(backbone, head, rgb, data.labels,  # noqa: E731
                                                           [s for s in shown if s != data.neither_label])
    write_error_report(output / ERRORS_HTML, rows, image_root or default_image_root(data),
                       f"Test errors: {data.root.name}", len(test), explain)
