"""Portable output names for the input columns a job carries through.

An input manifest may name columns anything (``user name``, ``1st-tag``,
``Score_Acme``); query engines do not all accept that: Spark refuses a file
whose names clash case-insensitively, DuckDB silently renames one, BigQuery
rejects names outside letters, digits and underscores. Carried names are
therefore rewritten once, by the same rules everywhere:

- accents are dropped (``café`` -> ``cafe``), every other run of characters
  outside ``[A-Za-z0-9_]`` becomes one ``_``, leading and trailing ``_`` go
  (which also keeps BigQuery's reserved ``_TABLE_``/``_FILE_``/``_PARTITION``
  prefixes out); an empty result becomes ``column``;
- a name starting with a digit, or equal (case-insensitively) to an output
  column, or starting with an output prefix such as ``score_``, gets ``input_``;
- names are cut to ``MAX_LENGTH`` characters and made unique
  case-insensitively with ``_2``, ``_3``, ... in input order.

Names that already follow the rules are kept as they are, case included.
"""

from __future__ import annotations

import re
import unicodedata

PREFIX = "input_"
MAX_LENGTH = 128
_OTHER = re.compile(r"[^A-Za-z0-9_]+")


def _clean(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return _OTHER.sub("_", ascii_name).strip("_") or "column"


def portable_names(columns: list[str] | tuple[str, ...], reserved: set[str] | frozenset[str],
                   reserved_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """``{input name: output name}`` for ``columns``, in input order (see the module docstring for the rules)."""
    outputs = {name.lower() for name in reserved}
    prefixes = tuple(p.lower() for p in reserved_prefixes)
    taken = set(outputs)
    mapping = {}
    for column in columns:
        name = _clean(column)
        if name[0].isdigit() or name.lower() in outputs or name.lower().startswith(prefixes):
            name = PREFIX + name
        name = name[:MAX_LENGTH]
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            suffix = f"_{n}"
            candidate = name[:MAX_LENGTH - len(suffix)] + suffix
        taken.add(candidate.lower())
        mapping[column] = candidate
    return mapping
