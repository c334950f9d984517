"""Prompt building for the LLM proposer: templates in prompts/ filled from a ProposalContext.

Templates are plain markdown with `{placeholder}` fields. Only known placeholder names are
substituted, so JSON examples with braces can be written in a template as they are (no doubling).
Everything here is a pure function of the context: the same context gives byte-identical messages,
which is what the response cache keys on.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from discovery.search.proposers.base import ProposalContext, Rejection, Survivor
from discovery.tasks.spec import Task

PROMPTS_PACKAGE = "discovery.search.proposers.prompts"  # the top-level prompts/ folder, mapped in pyproject.toml


def prompts_dir() -> Path:
    """The prompt templates, as installed with the package (importlib.resources)."""
    try:
        return Path(str(resources.files(PROMPTS_PACKAGE)))
    except ModuleNotFoundError:  # a checkout used without installing it: the folder beside the code
        return Path(__file__).resolve().parents[3] / "prompts"


PROMPTS_DIR = prompts_dir()
SYSTEM_TEMPLATE = "llm_system.md"
USER_TEMPLATE = "llm_user.md"
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class Templates:
    system: str
    user: str

    @classmethod
    def load(cls, prompts_dir: str | Path | None = None) -> "Templates":
        d = Path(prompts_dir) if prompts_dir is not None else PROMPTS_DIR
        texts = []
        for name in (SYSTEM_TEMPLATE, USER_TEMPLATE):
            path = d / name
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise FileNotFoundError(f"prompt template {path} is missing (prompts_dir={d})") from None
        return cls(system=texts[0], user=texts[1])


def fill(template: str, values: dict[str, str]) -> str:
    """Replace `{name}` for the names in `values`; any other braces are left untouched."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def task_card(task: Task) -> str:
    lines = [f"Task: {task.name}: {task.title}"]
    if task.description.strip():
        lines.append(_one_line(task.description, 700))
    if len(task.targets) == 1:
        lines.append(f"Target: {task.targets[0]} (the formula predicts it)")
    else:
        lines.append(f"Targets: {', '.join(task.targets)} (one formula form, fitted to each target separately)")
    if task.group_column:
        lines.append(
            f"Groups: rows sharing a value of `{task.group_column}` get their own fitted constants; "
            "the formula form is shared by all groups."
        )
    else:
        lines.append("Groups: none (one set of constants for all rows).")
    limit = task.constant_limit
    lines.append(f"Constant limit: at most {limit} constants per formula." if limit else "Constant limit: none.")
    if task.target_range is not None:
        lo, hi = task.target_range
        lines.append(f"Target range: by definition the target lies in [{lo:g}, {hi:g}]; a law that predicts outside it "
                     "(inside the data or when extrapolated) ranks below every law that does not.")
    lines.append("Variables (use these symbols exactly):")
    for v in task.variables:
        desc = f"- {v.symbol}"
        if v.meaning:
            desc += f": {v.meaning}"
        if v.unit:
            desc += f" [unit: {v.unit}]"
        if v.range is not None:
            desc += f"; observed range {_num(v.range[0])} to {_num(v.range[1])}"
        if v.monotone:
            desc += (f"; known shape: the target is {v.monotone} in {v.symbol}, all else fixed (a law that turns "
                     f"the other way within 100x beyond the data ranks below every law that does not)")
        lines.append(desc)
    return "\n".join(lines)


def format_survivors(survivors: list[Survivor], limit: int) -> str:
    if not survivors:
        return "(none yet: this is the first generation)"
    out = []
    for s in survivors[:limit]:
        out.append(
            f"#{s.id}: {s.formula}\n"
            f"    val R2 = {_num(s.val_r2)}, val NMSE = {_num(s.val_nmse)}, "
            f"complexity {s.complexity}, {s.n_constants} constants"
            + (f"; BREAKS A KNOWN SHAPE: {s.shape}" if s.shape else "")
        )
        if s.constants:
            fitted = ", ".join(f"{k} = {_num(v)}" for k, v in s.constants.items())
            out.append(f"    fitted constants (one group): {_one_line(fitted, 400)}")
    return "\n".join(out)


def format_rejections(rejections: list[Rejection], limit: int) -> str:
    seen: set[str] = set()
    picked: list[Rejection] = []
    for r in reversed(rejections):  # newest last in the context: keep the newest `limit` distinct ones
        key = r.formula.strip()
        if key in seen:
            continue
        seen.add(key)
        picked.append(r)
        if len(picked) >= limit:
            break
    if not picked:
        return "(none)"
    return "\n".join(
        f"- `{_one_line(r.formula, 160) or '(no formula)'}`: {_one_line(r.reason, 220)}" for r in reversed(picked)
    )


def _reference_scale(lo: float, hi: float) -> str:
    """A round power of ten near the middle of a positive range, written as a literal (1e9)."""
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return "1"
    exponent = round(math.log10(math.sqrt(lo * hi)))
    return "1" if exponent == 0 else f"1e{exponent}"


def example_reply(task: Task) -> str:
    """The format example, written in this task's own symbols, within its constant limit."""
    v = task.variables[0]
    ref = _reference_scale(*v.range) if v.range is not None else "1"
    x = v.symbol if ref == "1" else f"({v.symbol}/{ref})"
    limit = task.constant_limit or 3
    if limit >= 3:
        formula = f"E + A*{x}**(-alpha)"
        consts = {"E": {"init": 1.0, "bounds": [0, None]}, "A": {"init": 1.0, "bounds": [0, None]},
                  "alpha": {"init": 0.3, "bounds": [0, 3]}}
    elif limit == 2:
        formula = f"A*{x}**(-alpha)"
        consts = {"A": {"init": 1.0, "bounds": [0, None]}, "alpha": {"init": 0.3, "bounds": [0, 3]}}
    else:
        formula = f"A*log({x} + 1)"
        consts = {"A": {"init": 1.0}}
    cand = {"formula": formula, "constants": consts,
            "rationale": "one line: why this form should fit and extrapolate", "parents": [3]}
    body = json.dumps(cand)
    return '{"candidates": [\n  ' + body + ',\n  ...\n]}'


def build_messages(
    ctx: ProposalContext,
    n: int,
    templates: Templates,
    *,
    max_survivors: int = 8,
    max_rejections: int = 10,
) -> list[dict[str, str]]:
    """The chat messages asking for `n` candidates for this context."""
    task = ctx.task
    limit = task.constant_limit
    values = {
        "constant_limit": str(limit) if limit else "no fixed",
        "constant_rule": (f"At most {limit} constants per formula." if limit
                          else "Use as few constants as the data needs."),
        "constant_rule_short": f"at most {limit} constants each" if limit else "few constants each",
        "symbols": ", ".join(task.symbols),
        "task_card": task_card(task),
        "data_summary": ctx.data_summary.strip() or "(not provided)",
        "survivors": format_survivors(ctx.survivors, max_survivors),
        "residuals": ctx.residuals.strip() or "(not available)",
        "rejections": format_rejections(ctx.rejections, max_rejections),
        "n": str(n),
        "example": example_reply(task),
        "generation": str(ctx.generation),
        "island": str(ctx.island),
    }
    return [
        {"role": "system", "content": fill(templates.system, values).strip()},
        {"role": "user", "content": fill(templates.user, values).strip()},
    ]
