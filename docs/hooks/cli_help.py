"""MkDocs hook: replace ``<!-- lddmm-help COMMAND -->`` in a page by the live ``lddmm COMMAND --help`` text.

The CLI reference is generated from the parser itself, so it cannot drift from the code.
"""

from __future__ import annotations

import os
import re

_MARK = re.compile(r"<!-- lddmm-help ?([a-z]*) -->")


def _help(command: str) -> str:
    os.environ["COLUMNS"] = "80"
    from registration.cli import build_parser

    parser = build_parser()
    if not command:
        return parser.format_help()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    if command not in sub.choices:
        raise ValueError(f"lddmm-help: unknown command {command!r}; expected one of {sorted(sub.choices)}")
    return sub.choices[command].format_help()


def on_page_markdown(markdown, page, config, files):
    return _MARK.sub(lambda m: "```text\n" + _help(m.group(1)).rstrip() + "\n```", markdown)
