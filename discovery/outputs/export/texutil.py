"""LaTeX building blocks shared by every LaTeX export: escaping, numbers, widths and booktabs tables.

Widths are estimated in points for a one-column article at 10 pt (`TEXT_WIDTH`); a table wider than
the text is split into several tables of fewer columns, and a table with many rows becomes a
`longtable` that breaks across pages. `tests/test_latex_document.py` compiles the result with pdflatex
and checks that no box is overfull.
"""
from __future__ import annotations

import re

TEXT_WIDTH = 345.0  # \textwidth of the article class at 10 pt, in points
LONG_ROWS = 18  # more body rows than this: a longtable instead of a floating table
COLUMN_SEP = 12.0  # 2 \tabcolsep at its default 6 pt

_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
            "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
            "–": "--", "—": "---", "≤": r"$\le$", "≥": r"$\ge$", "×": r"$\times$", "·": r"$\cdot$",
            "²": r"$^2$", "→": r"$\to$", "∞": r"$\infty$", "≈": r"$\approx$", "±": r"$\pm$", "∝": r"$\propto$",
            "…": r"\ldots{}"}
SIZES = {r"\small": 0.9, r"\footnotesize": 0.8, r"\scriptsize": 0.7, "": 1.0}


def escape(text: str) -> str:
    """Text-mode escaping of LaTeX's special characters."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def tex_number(text: str) -> str:
    """`1.23e+10` -> `1.23 \\cdot 10^{10}` (math mode); other text passes, with `–` and `∞` translated."""
    m = re.fullmatch(r"(-?[\d.]+)e([+-]\d+)", text)
    if m:
        return rf"{m.group(1)} \cdot 10^{{{int(m.group(2))}}}"
    return text.replace("–", "--").replace("∞", r"\infty")


_GROUPS = re.compile(r"\\(frac|sqrt|mathit|mathrm|text|textit|operatorname)\b")
_WORDS = {"exp": 15.0, "log": 13.0, "tanh": 21.0, "max": 19.0, "min": 18.0, "cdot": 7.8, "left": 0.0, "right": 0.0,
          "infty": 10.0, "propto": 10.0, "pm": 10.0, "times": 10.0, "quad": 10.0, "qquad": 20.0}


def _group(tex: str, i: int) -> tuple[str, int]:
    """The brace group starting at tex[i] == '{' -> (content, index after it); a single token otherwise."""
    if i >= len(tex):
        return "", i
    if tex[i] != "{":
        if tex[i] == "\\":
            m = re.match(r"\\[A-Za-z]+|\\.", tex[i:])
            return m.group(0), i + len(m.group(0))
        return tex[i], i + 1
    depth = 0
    for j in range(i, len(tex)):
        depth += tex[j] == "{"
        depth -= tex[j] == "}"
        if depth == 0:
            return tex[i + 1:j], j + 1
    return tex[i + 1:], len(tex)


def math_width(tex: str, size: float = 1.0) -> float:
    """Rough width in points of math `tex` at 10 pt (scaled by `size`): a little above TeX's, on purpose."""
    w, i = 0.0, 0
    while i < len(tex):
        ch = tex[i]
        if ch == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", tex[i:])
            name = m.group(1)
            i += len(m.group(0))
            if name == "frac":
                a, i = _group(tex, i)
                b, i = _group(tex, i)
                w += max(math_width(a, size), math_width(b, size)) + 2 * size
            elif name == "sqrt":
                a, i = _group(tex, i)
                w += math_width(a, size) + 9 * size
            elif name in ("mathit", "mathrm", "text", "textit", "operatorname"):
                a, i = _group(tex, i)
                w += math_width(a, size)
            elif name in _WORDS:
                w += _WORDS[name] * size
            elif name in (",", ";", ":", "!", " "):
                w += 2 * size
            elif len(name) > 1:
                w += 6.5 * size  # a Greek letter or a symbol
            else:
                w += 5 * size
        elif ch in "^_":
            a, i = _group(tex, i + 1)
            w += math_width(a, 0.72 * size)
        elif ch in "{} ":
            i += 1
        elif ch in "+-=<>":
            w += (13.5 if ch in "=<>" else 12.2) * size
            i += 1
        elif ch in "()[]|.,;":
            w += 3.9 * size
            i += 1
        else:
            w += 5.3 * size
            i += 1
    return w


def text_width(text: str, size: float = 1.0) -> float:
    """Rough width in points of (already escaped) text at 10 pt, math parts measured as math."""
    w = 0.0
    for k, part in enumerate(re.split(r"(?<!\\)\$", text)):
        if k % 2:
            w += math_width(part, size)
        else:
            plain = re.sub(r"\\[A-Za-z]+\{?|[{}]", "", part)
            w += 5.0 * size * len(plain)
    return w


def _tabular(colspec: str, head: list[str], rows: list[list[str]]) -> list[str]:
    return [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule",
            *[" & ".join(r) + r" \\" for r in rows], r"\bottomrule", r"\end{tabular}"]


def _longtable(colspec: str, head: list[str], rows: list[list[str]], caption: str, label: str | None) -> list[str]:
    n = len(head)
    first = [rf"\caption{{{caption}}}" + (rf"\label{{{label}}}" if label else "") + r" \\", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule", r"\endfirsthead"]
    cont = [rf"\multicolumn{{{n}}}{{l}}{{\emph{{(continued)}}}} \\", r"\toprule", " & ".join(head) + r" \\",
            r"\midrule", r"\endhead", r"\bottomrule", r"\endlastfoot"]
    return [rf"\begin{{longtable}}{{{colspec}}}", *first, *cont, *[" & ".join(r) + r" \\" for r in rows],
            r"\end{longtable}"]


def column_chunks(first_width: float, widths: list[float], limit: float = TEXT_WIDTH) -> list[list[int]]:
    """Indices of the columns after the first, in runs that each fit beside the first within `limit`."""
    chunks: list[list[int]] = [[]]
    used = first_width + COLUMN_SEP
    for i, w in enumerate(widths):
        if chunks[-1] and used + w + COLUMN_SEP > limit:
            chunks.append([])
            used = first_width + COLUMN_SEP
        chunks[-1].append(i)
        used += w + COLUMN_SEP
    return chunks


def table_float(caption: str, label: str, head: list[str], colspec: str, rows: list[list[str]],
                size: str = r"\small", widths: list[float] | None = None) -> str:
    """A booktabs table that fits the text width: split into several tabulars by columns when `widths`
    (estimated, in points, one per column) exceed it; a longtable when it has many rows."""
    scale = SIZES.get(size, 1.0)
    if widths is None:
        widths = [max([text_width(c, scale) for c in col] + [text_width(h, scale)])
                  for h, col in zip(head, zip(*rows, strict=True) if rows else [[]] * len(head), strict=True)]
    chunks = column_chunks(widths[0], widths[1:]) if len(head) > 1 else [[]]
    parts = []
    for k, chunk in enumerate(chunks):
        cols = [0, *[i + 1 for i in chunk]]
        spec = "".join(colspec[c] for c in cols)
        h = [head[c] for c in cols]
        body = [[r[c] for c in cols] for r in rows]
        more = f" (columns {k + 1} of {len(chunks)})" if len(chunks) > 1 else ""
        if len(rows) > LONG_ROWS:
            parts += ["{" + size, *_longtable(spec, h, body, caption + more, label if k == 0 else None), "}"]
        else:
            parts.append("\n".join([r"\begin{table}[ht]", r"\centering", size, rf"\caption{{{caption}{more}}}",
                                    *([rf"\label{{{label}}}"] if k == 0 else []), *_tabular(spec, h, body),
                                    r"\end{table}"]))
    return "\n".join(parts)
