"""``brandlens evaluate``: the scoring job's output measured against a person's own labels.

Truth comes from a column carried through from the posts (``--truth``, e.g. the
manifest's ``label``, carried as ``input_label``) or from a labels file joined by
post id (``--labels``). The figures are the trainer's own (:mod:`brandlens.metrics`,
the same threshold rule the exported model runs), so the same images give the
same numbers as the trainer's ``metrics.json``. Writes into ``--output``:

- ``evaluation.json``: accuracy, per-class P/R/F1, confusion matrix, calibration,
  average precision per brand, the threshold table, breakdowns (``--by``);
- ``thresholds.csv``: threshold -> brand precision, brand recall, share called neither;
- ``reliability.png``, ``precision_recall.png``;
- ``report.html``: all of it, with thumbnails of the most confident errors.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brandlens import fileio
from brandlens import metrics as ev
from brandlens.errors import ConfigError
from brandlens.thumbnails import error_table, thumbnail_data_uri
from schemas import model as contract
from schemas import scores as schema

log = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
THRESHOLDS_CSV = "thresholds.csv"
RELIABILITY_PNG = "reliability.png"
PR_PNG = "precision_recall.png"
REPORT_HTML = "report.html"
TRUTH_CANDIDATES = ("input_label", "truth", "true_label", "source_label")
THRESHOLD_GRID = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class EvaluateConfig:
    scores: str
    output: str
    truth: str | None = None
    labels: str | None = None
    labels_id_column: str = "post_id"
    labels_column: str = "label"
    by: tuple[str, ...] = ()
    where: str | None = None
    model: str | None = None
    model_version: str | None = None
    errors: int = 40
    bins: int = 10
    target_precision: float | None = None

    def __post_init__(self):
        if self.truth and self.labels:
            raise ConfigError("give --truth (a column of the scores) or --labels (a file), not both")
        if self.errors < 0 or self.bins < 1:
            raise ConfigError("--errors must be >= 0 and --bins >= 1")
        if self.target_precision is not None and not 0 < self.target_precision <= 1:
            raise ConfigError(f"--target-precision must be in (0, 1], got {self.target_precision}")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scores", required=True, help="a scoring output folder (or its scores/ folder)")
        parser.add_argument("--output", required=True, help="folder for evaluation.json, thresholds.csv, plots and report.html")
        truth = parser.add_argument_group("truth (one of)")
        truth.add_argument("--truth", default=None,
                           help=f"column of the scores holding the true label (default: the first of {', '.join(TRUTH_CANDIDATES)})")
        truth.add_argument("--labels", default=None, help="labels file (.csv/.jsonl/.parquet) joined on post id")
        truth.add_argument("--labels-id-column", default="post_id", help="its post id column (default %(default)s)")
        truth.add_argument("--labels-column", default="label", help="its label column (default %(default)s)")
        parser.add_argument("--by", action="append", default=[], metavar="COLUMN",
                            help="also break the figures down by this column (repeatable), e.g. --by source")
        parser.add_argument("--where", default=None, help="SQL condition on the scores' columns, e.g. \"source_split = 'test'\"")
        parser.add_argument("--model", default=None,
                            help="the export folder (its model_card.json); default: the scoring run's summary")
        parser.add_argument("--model-version", default=None, help="evaluate this model's rows when several scored the folder")
        parser.add_argument("--errors", type=int, default=40, help="errors shown in the report (default %(default)s)")
        parser.add_argument("--bins", type=int, default=10, help="calibration bins (default %(default)s)")
        parser.add_argument("--target-precision", type=float, default=None,
                            help="also report the lowest threshold reaching this brand precision on these labels")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EvaluateConfig":
        return cls(args.scores, args.output, args.truth, args.labels, args.labels_id_column, args.labels_column,
                   tuple(args.by), args.where, args.model, args.model_version, args.errors, args.bins, args.target_precision)


@dataclass(frozen=True)
class Card:
    """What evaluation needs of the model card."""

    version_id: str
    labels: tuple[str, ...]
    neither_label: str | None
    threshold: float | None

    @property
    def neither_index(self) -> int | None:
        return self.labels.index(self.neither_label) if self.neither_label in self.labels else None


@dataclass(frozen=True)
class Scored:
    """The evaluated rows as arrays, in the card's class order."""

    scores: np.ndarray      # float [N, C]
    y: np.ndarray           # int [N]
    stored_labels: list     # the label column as written
    uris: list              # resolved uris (thumbnails)
    given_uris: list
    post_ids: list
    columns: dict           # --by column -> values


def _folders(scores: str) -> tuple[str, str]:
    """(scores dir, job folder) for a job folder or its scores/ folder."""
    root = scores.rstrip("/")
    if fileio.exists(f"{root}/scores"):
        return f"{root}/scores", root
    return root, (root.rsplit("/", 1)[0] if "/" in root else ".")


def _card_from(card: dict) -> Card:
    return Card(card["version_id"], tuple(card["labels"]), card.get("neither_label"), card.get("threshold"))


def find_card(job_folder: str, model: str | None, version: str) -> Card:
    """The model card of ``version``: from ``--model`` or from the scoring runs' summaries."""
    if model:
        card = _card_from(json.loads(fileio.read_text(fileio.join(model, contract.MODEL_CARD))))
        if card.version_id != version:
            raise ConfigError(f"--model is {card.version_id}, but the rows were scored by {version}")
        return card
    for path in sorted(p for p in fileio.list_files(f"{job_folder}/runs") if p.endswith("/summary.json")):
        summary = json.loads(fileio.read_text(path))
        if summary.get("model", {}).get("version_id") == version:
            return _card_from(summary["model"])
    raise ConfigError(f"no run summary under {job_folder}/runs names model {version}; pass --model EXPORT_FOLDER")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _labels_relation(path: str) -> str:
    literal = "'" + path.replace("'", "''") + "'"
    lower = path.lower()
    if lower.endswith(".parquet"):
        return f"read_parquet({literal})"
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return f"read_json_auto({literal})"
    return f"read_csv_auto({literal}, all_varchar = true)"


def load_rows(config: EvaluateConfig):
    """(card, Scored, counts of rows left out and why, where the truth came from) from the scores folder."""
    from brandlens.query import connect, run_query

    scores_dir, job_folder = _folders(config.scores)
    con = connect(scores_dir)
    names = run_query(con, "SELECT * FROM scores LIMIT 0")[0]
    where = f"WHERE ({config.where})" if config.where else ""
    versions = [r[0] for r in run_query(con, f"SELECT DISTINCT {schema.MODEL_VERSION} FROM scores {where} ORDER BY 1")[1]]
    if config.model_version:
        versions = [v for v in versions if v == config.model_version] or [config.model_version]
    if len(versions) != 1:
        raise ConfigError(f"the rows were scored by {len(versions)} models ({', '.join(versions) or 'none'}); "
                          "choose one with --model-version")
    card = find_card(job_folder, config.model, versions[0])
    missing = [schema.score_column(label) for label in card.labels if schema.score_column(label) not in names]
    missing += [c for c in config.by if c not in names]
    if config.labels:
        truth, truth_source = "truth.truth", f"{config.labels}: {config.labels_column} by {config.labels_id_column}"
        source = (f"scores JOIN (SELECT CAST({_quote(config.labels_id_column)} AS VARCHAR) AS truth_post_id, "
                  f"CAST({_quote(config.labels_column)} AS VARCHAR) AS truth FROM {_labels_relation(config.labels)}) AS truth "
                  f"ON scores.{schema.POST_ID} = truth.truth_post_id")
    else:
        column = config.truth or next((c for c in TRUTH_CANDIDATES if c in names), None)
        if column is None:
            raise ConfigError(f"no truth column among the scores' columns ({', '.join(names)}); "
                              "name one with --truth or give a --labels file")
        missing += [column] if column not in names else []
        truth, source, truth_source = f"scores.{_quote(column)}", "scores", column
    if missing:
        raise ConfigError(f"the scores have no column(s) {', '.join(missing)}")
    if config.labels:
        twice = run_query(con, f"SELECT {_quote(config.labels_id_column)}, count(*) FROM {_labels_relation(config.labels)} "
                               f"GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 3")[1]
        if twice:
            raise ConfigError(f"{config.labels} labels some post ids more than once: "
                              + ", ".join(f"{post} ({n} times)" for post, n in twice))
    resolved = schema.RESOLVED_URI if schema.RESOLVED_URI in names else schema.IMAGE_URI
    select = [f"scores.{schema.POST_ID}", f"scores.{schema.IMAGE_URI}", f"scores.{resolved}", f"scores.{schema.LABEL}",
              f"CAST({truth} AS VARCHAR)"] + [f"scores.{schema.score_column(label)}" for label in card.labels]
    select += [f"CAST(scores.{_quote(c)} AS VARCHAR)" for c in config.by]
    version = versions[0].replace("'", "''")
    filters = [f"scores.{schema.MODEL_VERSION} = '{version}'"] + ([f"({config.where})"] if config.where else [])
    try:
        _, rows = run_query(con, f"SELECT {', '.join(select)} FROM {source} WHERE {' AND '.join(filters)} "
                                 f"ORDER BY scores.{schema.POST_ID}")
    except ConfigError as exc:
        raise ConfigError(f"cannot read the scores with their truth: {exc}") from None
    return (card, *_to_arrays(rows, card, config.by), truth_source)


def _to_arrays(rows, card: Card, by: tuple[str, ...]):
    index = {label: i for i, label in enumerate(card.labels)}
    kept, unlabelled, unknown = [], 0, {}
    for row in rows:
        truth = row[4].strip() if isinstance(row[4], str) else None
        if not truth:
            unlabelled += 1
        elif truth not in index:
            unknown[truth] = unknown.get(truth, 0) + 1
        else:
            kept.append(row)
    c = len(card.labels)
    scored = Scored(
        scores=np.array([r[5:5 + c] for r in kept], np.float64).reshape(len(kept), c),
        y=np.array([index[r[4].strip()] for r in kept], np.int64),
        stored_labels=[r[3] for r in kept], uris=[r[2] for r in kept], given_uris=[r[1] for r in kept],
        post_ids=[r[0] for r in kept],
        columns={name: [r[5 + c + j] for r in kept] for j, name in enumerate(by)},
    )
    left_out = {"rows": len(rows), "evaluated": len(kept), "without_truth": unlabelled,
                "truth_not_a_model_label": dict(sorted(unknown.items()))}
    return scored, left_out


def breakdown(scored: Scored, column: str, card: Card) -> list[dict]:
    """The headline figures per value of ``column``."""
    values = np.array(["(null)" if v is None else v for v in scored.columns[column]], object)
    out = []
    for value in sorted(set(values)):
        members = values == value
        m = ev.evaluate(scored.scores[members], scored.y[members], list(card.labels), card.neither_index, card.threshold)
        out.append({column: value, **{k: m[k] for k in ("count", "accuracy", "macro_f1", "brand_precision", "brand_recall") if k in m}})
    return out


def compute(card: Card, scored: Scored, config: EvaluateConfig) -> dict:
    """Every figure of the evaluation (JSON-ready)."""
    labels, neither = list(card.labels), card.neither_index
    metrics = ev.evaluate(scored.scores, scored.y, labels, neither, card.threshold)
    predicted = ev.apply_threshold(scored.scores, neither, card.threshold)
    agree = [labels[p] == s for p, s in zip(predicted, scored.stored_labels)]
    result = {
        "model": {"version_id": card.version_id, "labels": labels, "neither_label": card.neither_label, "threshold": card.threshold},
        "metrics": metrics,
        "stored_label_agreement": float(np.mean(agree)) if agree else float("nan"),
        "calibration": ev.reliability(scored.scores, scored.y, config.bins),
        "average_precision": {},
        "breakdown": {column: breakdown(scored, column, card) for column in config.by},
    }
    for j, label in enumerate(labels):
        if j != neither:
            result["average_precision"][label] = ev.pr_curve(scored.scores[:, j], scored.y == j)["average_precision"]
    if neither is not None:
        grid = sorted(set(THRESHOLD_GRID) | ({float(card.threshold)} if card.threshold is not None else set()))
        result["thresholds"] = ev.threshold_table(scored.scores, scored.y, neither, grid)
        if config.target_precision is not None:
            result["target_precision"] = ev.choose_threshold(scored.scores, scored.y, neither, config.target_precision)
    return result


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_reliability(calibration: dict, path: Path) -> None:
    """Accuracy against mean top score per bin (the diagonal is perfect calibration), with bin counts."""
    fig = _figure(5, 5)
    ax = fig.subplots()
    bins = [b for b in calibration["bins"] if b["count"]]
    width = calibration["bins"][0]["high"] - calibration["bins"][0]["low"]
    ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge", alpha=0.6, edgecolor="k",
           label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C1", label="bins at their mean top score")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top softmax score")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability: ECE {calibration['ece']:.3f}")
    ax.legend(loc="lower right")
    fig.savefig(path)


def plot_precision_recall(scored: Scored, card: Card, path: Path) -> None:
    fig = _figure(6, 5)
    ax = fig.subplots()
    for j, label in enumerate(card.labels):
        if j == card.neither_index:
            continue
        curve = ev.pr_curve(scored.scores[:, j], scored.y == j)
        if curve["positives"]:
            ax.step(curve["recall"], curve["precision"], where="post", label=f"{label} (AP {curve['average_precision']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall per brand (score_<brand>, one vs rest)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.savefig(path)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
    return html.escape(str(value))


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(path: Path) -> str:
    """A PNG as a data: URI, so the report is one file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _thumbnail(uri: str) -> str | None:
    try:
        return thumbnail_data_uri(fileio.read_bytes(uri))
    except Exception:  # a report must not fail for one unreadable image
        return None


def write_report(path: Path, result: dict, scored: Scored, card: Card, errors: int, title: str) -> None:
    labels = list(card.labels)
    m = result["metrics"]
    predicted = ev.apply_threshold(scored.scores, card.neither_index, card.threshold)
    worst = ev.error_rows(scored.scores, scored.y, predicted, labels, scored.uris)[:errors]
    given = dict(zip(scored.uris, scored.given_uris))
    headline = {k: m[k] for k in ("count", "accuracy", "argmax_accuracy", "macro_f1", "cross_entropy",
                                  "brand_precision", "brand_recall") if k in m}
    headline["ECE"] = result["calibration"]["ece"]
    matrix = [{"true \\ predicted": labels[i], **{lab: n for lab, n in zip(labels, row)}} for i, row in enumerate(m["confusion_matrix"])]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}td,th{padding:4px 8px;border-bottom:1px solid #ddd;"
             "vertical-align:top;text-align:left}img{max-width:160px}.score{font-family:monospace}.miss{color:#999}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>model {html.escape(card.version_id)}; threshold {card.threshold}; "
             f"{result['left_out']['evaluated']} of {result['left_out']['rows']} rows evaluated "
             f"({result['left_out']['without_truth']} without truth, truth not a model label: "
             f"{html.escape(json.dumps(result['left_out']['truth_not_a_model_label']))}).</p>",
             "<h2>Figures</h2>", _table([headline]),
             "<h2>Per class</h2>", _table([{"class": k, **v} for k, v in m["per_class"].items()]),
             "<h2>Confusion matrix</h2>", _table(matrix)]
    if "thresholds" in result:
        parts += ["<h2>What a threshold costs</h2><p>A brand whose top score is below the threshold is called neither.</p>",
                  _table(result["thresholds"])]
        if "target_precision" in result:
            parts.append(f"<p>Target precision: {html.escape(json.dumps(result['target_precision']))}</p>")
    parts += [f"<h2>Calibration</h2><img src='{_png(path.parent / RELIABILITY_PNG)}' style='max-width:480px'>",
              f"<h2>Precision-recall</h2><img src='{_png(path.parent / PR_PNG)}' style='max-width:560px'>",
              _table([{"brand": k, "average_precision": v} for k, v in result["average_precision"].items()])]
    for column, rows in result["breakdown"].items():
        parts += [f"<h2>By {html.escape(column)}</h2>", _table(rows)]
    parts.append(f"<h2>Most confident errors</h2><p>{len(worst)} shown of {int(np.sum(predicted != scored.y))}; "
                 "uri as the input gave it.</p>")
    parts += error_table(worst, _thumbnail, lambda uri: given.get(uri, uri))
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def _thresholds_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def evaluate(config: EvaluateConfig) -> dict:
    """Compute and write everything; returns the evaluation (also in ``evaluation.json``)."""
    card, scored, left_out, truth = load_rows(config)
    if not len(scored.y):
        raise ConfigError(f"no row has a truth label among the model's labels ({left_out})")
    result = compute(card, scored, config)
    result["left_out"] = left_out
    result["input"] = {"scores": config.scores, "truth": truth, "where": config.where}
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / EVALUATION_JSON).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if "thresholds" in result:
        (out / THRESHOLDS_CSV).write_text(_thresholds_csv(result["thresholds"]))
    plot_reliability(result["calibration"], out / RELIABILITY_PNG)
    plot_precision_recall(scored, card, out / PR_PNG)
    write_report(out / REPORT_HTML, result, scored, card, config.errors, f"Evaluation of {card.version_id}")
    return result


def summary_text(result: dict, output: str) -> str:
    m = result["metrics"]
    line = (f"{m['count']} posts: accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}, "
            f"ECE {result['calibration']['ece']:.3f}")
    if "brand_precision" in m:
        line += f", brand precision {m['brand_precision']:.3f}, brand recall {m['brand_recall']:.3f}"
    return f"{line} (threshold {result['model']['threshold']}) -> {output}/{REPORT_HTML}"
