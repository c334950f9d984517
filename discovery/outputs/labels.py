"""Readable names for the things tables and figures print: groups and LaTeX labels."""
from __future__ import annotations

import re

_TUPLE_ITEM = re.compile(r"""'([^']*)'|"([^"]*)"|([^,()\s][^,()]*)""")


def group_label(name: str, shorten: int = 48) -> str:
    """A readable group name: tuple text becomes its items joined by commas with organisation prefixes
    (`MBZUAI/`) dropped; `all_data` becomes `all data`; long names are cut with an ellipsis."""
    text = str(name).strip()
    if text.startswith("(") and text.endswith(")"):
        items = ["".join(m.groups(default="")).strip() for m in _TUPLE_ITEM.finditer(text[1:-1])]
        items = [i.rsplit("/", 1)[-1] for i in items if i]
        text = ", ".join(items) or text
    if text == "all_data":
        text = "all data"
    return text if len(text) <= shorten else text[: shorten - 1] + "…"


def label_part(text: str) -> str:
    """A piece of a LaTeX \\label: letters, digits, `-` and `.` only."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-").lower() or "x"
