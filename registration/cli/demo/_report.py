"""The demo's report: sections with pictures, numbers and threshold checks, written as JSON and one HTML page."""

from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import asdict, dataclass, field
from html import escape

__all__ = ["Check", "Section", "use_agg", "write_report"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Check:
    """A number of the demo with the threshold it must pass, e.g. ``Check("Dice", 0.99, ">=", 0.98)``."""

    name: str
    value: float
    op: str
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(math.isfinite(self.value) and _OPS[self.op](self.value, self.threshold))


@dataclass
class Section:
    """One part of the demo.

    Attributes
    ----------
    key : str
        Short identifier (``report.json`` key).
    title : str
    caption : str
        One paragraph saying what was done and how to read the pictures.
    pictures : list of str
        File names (relative to the output directory).
    numbers : dict
        Name -> value, shown in a table.
    checks : list of Check
        Numbers with thresholds (shown with pass / fail; the quick demo's test asserts them).
    seconds : float
        Wall time of the section.
    """

    key: str
    title: str
    caption: str
    pictures: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    seconds: float = 0.0


def use_agg():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:0 1em;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
section{border-top:1px solid #ddd;margin-top:1.5em}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3em 0}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f6f6f6;font-weight:600}.pass{color:#1a7f37}.fail{color:#cf222e;font-weight:700}
"""


def write_report(out: str, sections: list, *, quick: bool, seconds: float) -> tuple:
    """Write ``out/report.json`` and ``out/index.html``; return their paths.

    ``report.json`` holds, per section key, the title, numbers, checks (value, op, threshold, passed) and
    pictures, plus the total time and whether every check passed.
    """
    report = {"quick": quick, "seconds": seconds,
              "all_checks_passed": all(c.passed for s in sections for c in s.checks),
              "sections": {s.key: {"title": s.title, "seconds": s.seconds, "numbers": s.numbers,
                                   "pictures": s.pictures,
                                   "checks": [dict(asdict(c), passed=c.passed) for c in s.checks]}
                           for s in sections}}
    json_path = os.path.join(out, "report.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2, default=float)

    summary = ["<tr><th>section</th><th>check</th><th>value</th><th>threshold</th><th></th><th>seconds</th></tr>"]
    for s in sections:
        for i, c in enumerate(s.checks or [None]):
            cells = ([escape(c.name), _fmt(c.value), escape(f"{c.op} {c.threshold:g}"),
                      f"<span class='{'pass' if c.passed else 'fail'}'>{'pass' if c.passed else 'FAIL'}</span>"]
                     if c else ["", "", "", ""])
            head = escape(s.title) if i == 0 else ""
            secs = f"{s.seconds:.1f}" if i == 0 else ""
            summary.append(f"<tr><td>{head}</td><td>{'</td><td>'.join(cells)}</td><td>{secs}</td></tr>")
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lddmm-nets demo</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>lddmm-nets demo</h1>",
             f"<p class='sub'>{'quick run' if quick else 'full run'}, {seconds:.0f} s in all; every number below was "
             f"computed in this run on data bundled with installed packages (dipy, nilearn, scikit-learn).</p>",
             f"<table>{''.join(summary)}</table>"]
    for s in sections:
        parts.append(f"<section id='{escape(s.key)}'><h2>{escape(s.title)}</h2><p>{escape(s.caption)}</p>")
        for pic in s.pictures:
            parts.append(f"<img src='{escape(pic)}' alt='{escape(s.title)}'>")
        rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_fmt(v))}</td></tr>" for k, v in s.numbers.items())
        parts.append(f"<table>{rows}</table></section>")
    parts.append("</body></html>")
    html_path = os.path.join(out, "index.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return json_path, html_path
