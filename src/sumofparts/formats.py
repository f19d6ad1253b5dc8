"""Text formats the library writes its tables in (one writer per format)."""
from __future__ import annotations

import csv
import io
import math
from typing import Any

__all__ = ["csv_text"]


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` (dicts) as CSV text with the given ``columns``; None and NaN as empty cells."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None or (isinstance(r.get(c), float) and math.isnan(r[c]))
                             else r.get(c)) for c in columns})
    return buf.getvalue()
