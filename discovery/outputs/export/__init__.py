"""Exports of a fitted law in the forms papers and benchmarks use.

One table (`FORMATS`) drives everything: a format's name, the file it writes and the function that
renders it from a `LawRecord`. `export(record, formats, out_dir)` writes the chosen ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from discovery.outputs.export import bibtex, json_law, latex, markdown, python_module, sldbench
from discovery.outputs.record import LawRecord, RunError, record_from_run


@dataclass(frozen=True)
class Format:
    filename: Callable[[LawRecord], str]
    render: Callable[[LawRecord], str]
    what: str


FORMATS: dict[str, Format] = {
    "latex": Format(lambda r: "law.tex", latex.render, "equation, constants and metrics tables (booktabs, amsmath)"),
    "markdown": Format(lambda r: "law.md", markdown.render, "the same for READMEs and issues"),
    "json": Format(lambda r: "law.json", json_law.render, "machine-readable law; `kepler fit --from` reads it"),
    "python": Format(python_module.filename, python_module.render, "standalone module (numpy) with predict()"),
    "sldbench": Format(sldbench.filename, sldbench.render, "SLDBench submission (numpy, scipy)"),
    "bibtex": Format(lambda r: "references.bib", bibtex.render, "citations of the data's source papers"),
}


def export(record: LawRecord, formats: list[str], out_dir: Path) -> list[Path]:
    """Write each format's file into `out_dir`; returns the paths written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in dict.fromkeys(formats):
        fmt = FORMATS[name]
        path = out_dir / fmt.filename(record)
        path.write_text(fmt.render(record), encoding="utf-8")
        paths.append(path)
    return paths


__all__ = ["FORMATS", "Format", "LawRecord", "RunError", "export", "record_from_run"]
