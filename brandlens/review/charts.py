"""Charts drawn on the server as SVG (matplotlib, no pyplot state): nothing is fetched by the browser."""

from __future__ import annotations

import io
from collections import Counter
from itertools import combinations


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buf.getvalue()


def _figure(width: float = 8, height: float = 3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def posts_per_day(rows: list[tuple]) -> bytes:
    """Lines of posts per brand per day from (day, brand, posts) rows."""
    fig = _figure()
    ax = fig.add_subplot()
    series: dict[str, dict] = {}
    for day, brand, posts in rows:
        series.setdefault(brand, {})[day] = posts
    days = sorted({day for day, _, _ in rows})
    for brand in sorted(series):
        ax.plot(days, [series[brand].get(d, 0) for d in days], marker="o", markersize=3, label=brand)
    if not rows:
        _empty(ax, "no brand posts match the filters")
    else:
        from matplotlib import dates

        ax.set_ylabel("posts")
        ax.set_ylim(bottom=0)
        ax.set_title("Posts per brand per day")
        ax.legend(loc="lower left", fontsize=8)
        span = (days[-1] - days[0]).days + 1 if hasattr(days[0], "year") else len(days)
        ax.xaxis.set_major_locator(dates.DayLocator(interval=max(1, span // 10)) if span <= 120 else dates.AutoDateLocator())
        ax.xaxis.set_major_formatter(dates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    return _svg(fig)


def share_of_voice(label_sets: list[tuple[list[str], int]]) -> bytes:
    """Each brand's share of all brand mentions (a post with two brands counts for both)."""
    counts = Counter()
    for labels, posts in label_sets:
        for label in labels:
            counts[label] += posts
    fig = _figure(6, 3.2)
    ax = fig.add_subplot()
    total = sum(counts.values())
    if not total:
        _empty(ax, "no brand posts match the filters")
        return _svg(fig)
    brands = sorted(counts, key=lambda b: -counts[b])
    shares = [100 * counts[b] / total for b in brands]
    bars = ax.barh(brands[::-1], shares[::-1], color="#3b6ea5")
    ax.bar_label(bars, labels=[f"{s:.1f} % ({counts[b]})" for b, s in zip(brands[::-1], shares[::-1])], fontsize=8)
    ax.set_xlabel("share of brand mentions (%)")
    ax.set_xlim(0, max(shares) * 1.3)
    ax.set_title("Share of voice")
    return _svg(fig)


def co_occurrence(label_sets: list[tuple[list[str], int]], multi_brand: bool) -> bytes:
    """A matrix of posts per pair of brands (the diagonal: posts per brand)."""
    brands = sorted({b for labels, _ in label_sets for b in labels})
    matrix = {(a, b): 0 for a in brands for b in brands}
    for labels, posts in label_sets:
        for a in set(labels):
            matrix[(a, a)] += posts
        for a, b in combinations(sorted(set(labels)), 2):
            matrix[(a, b)] += posts
            matrix[(b, a)] += posts
    fig = _figure(5, 4)
    ax = fig.add_subplot()
    if not brands:
        _empty(ax, "no brand posts match the filters")
        return _svg(fig)
    values = [[matrix[(a, b)] for b in brands] for a in brands]
    ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(brands)), brands, rotation=45, ha="right")
    ax.set_yticks(range(len(brands)), brands)
    top = max(max(r) for r in values) or 1
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black", fontsize=9)
    ax.set_title("Co-occurrence (posts)" if multi_brand else "Co-occurrence: one brand per post in this archive")
    return _svg(fig)
