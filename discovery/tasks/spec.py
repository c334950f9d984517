"""Task specs: one TOML file per dataset, validated by pydantic.

A task says what the data is (variables, targets, groups, where the bytes come from), how it is
split (train/test, and the scale axis along which validation is carved out of train), the rules a
law must follow (constant limit) and the human laws of the literature with their published scores.
"""
from __future__ import annotations

import os
import re
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from discovery.tasks.values import ConstantSpec, Direction, FitSettings, ShapePriors, Strict

CURATED_PACKAGE = "discovery.tasks.curated"  # the top-level tasks/ folder, mapped in pyproject.toml


def curated_tasks_dir() -> Path:
    """The curated task files, as installed with the package (importlib.resources)."""
    try:
        return Path(str(resources.files(CURATED_PACKAGE)))
    except ModuleNotFoundError:  # a checkout used without installing it: the folder beside the code
        return Path(__file__).resolve().parents[2] / "tasks"


TASKS_DIR = curated_tasks_dir()
IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
# A task's name names its file, its data folder and its results folder: a plain name, never a path (`..`).
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
PLAIN_NAME = "a plain name (letters, digits, _ and -, up to 64; it names files and folders)"


class TaskError(ValueError):
    """A task spec is missing or invalid; the message names the file and the field."""


class Variable(Strict):
    column: str = Field(description="column name in the tidy data frame")
    symbol: str = Field(description="identifier used for this variable in formulas, e.g. N")
    unit: str = ""
    meaning: str = ""
    range: tuple[float, float] | None = Field(default=None, description="observed [min, max] over all rows")
    monotone: Literal["decreasing", "increasing"] | None = Field(
        default=None, description="known direction of every target as this variable grows, all else fixed "
                                  "(e.g. loss vs parameters: decreasing); laws that break it rank last")
    role: Literal["model_size", "data"] | None = Field(
        default=None, description="what the variable is for compute-optimal allocation (`kepler derive`): "
                                  "model size N or training data D; without any role, the symbols N and D")

    @field_validator("symbol")
    @classmethod
    def _symbol_is_identifier(cls, v: str) -> str:
        if not IDENTIFIER.match(v):
            raise ValueError(f"symbol {v!r} must be an ASCII identifier (letter, then letters/digits/_)")
        return v


class PublishedScore(Strict):
    r2: float | None = Field(default=None, description="published test R2 (SLDBench's table, clipped at -1)")
    metrics: dict[str, float] = Field(default_factory=dict, description="other published test metrics, e.g. rmse")
    note: str = ""


class HumanLaw(Strict):
    name: str
    formula: str
    source: str = Field(description="who published it, e.g. 'Hoffmann et al. 2022'")
    constants: dict[str, ConstantSpec] = Field(
        default_factory=dict, description="constants to fit, with init and bounds (empty: fixed constants only)"
    )
    published_constants: dict[str, float] | dict[str, dict[str, float]] = Field(
        default_factory=dict, description="the paper's constants, scored as they are, without refitting: one table "
                                          "for every group, or one table per group name")
    fit: FitSettings = Field(default_factory=FitSettings)
    published: PublishedScore = Field(default_factory=PublishedScore)

    @model_validator(mode="after")
    def _has_constants(self) -> "HumanLaw":
        if not self.constants and not self.published_constants:
            raise ValueError(f"human law {self.name!r} needs `constants` (to fit) or `published_constants` (fixed)")
        return self

    @property
    def published_per_group(self) -> bool:
        return any(isinstance(v, dict) for v in self.published_constants.values())

    def published_for(self, group: str) -> dict[str, float]:
        """The published constants of one group (the same table for every group unless given per group)."""
        if not self.published_per_group:
            return dict(self.published_constants)
        if group not in self.published_constants:
            raise ValueError(f"human law {self.name!r}: no published constants for group {group!r}; "
                             f"given for {', '.join(sorted(self.published_constants))}")
        return dict(self.published_constants[group])


class Source(Strict):
    file: str = Field(description="upstream file name, as stored in the dataset's origin/ folder")
    url: str = Field(description="pinned URL (a commit, never a branch)")
    sha256: str
    format: Literal["csv", "parquet"]
    split: Literal["train", "test"] | None = Field(default=None, description="the split this file holds, if any")

    @field_validator("sha256")
    @classmethod
    def _hex64(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class SplitSpec(Strict):
    rule: str = Field(description="the rule behind the train/test split, in words")
    validation_axis: str = Field(description="column along which validation is carved out of train (largest values)")
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    validation_rule: Literal["largest", "largest_per", "interleaved"] = Field(
        default="largest",
        description="largest: the largest-axis rows of each group (extrapolation, for scale splits); largest_per: "
                    "for every value of `validation_per`, its rows at their largest axis value (for a test split "
                    "that is a corner, such as the largest model at its largest budget); interleaved: every k-th "
                    "row along the axis, from the largest (for splits that are not along a scale)")
    validation_per: str | None = Field(
        default=None, description="with rule largest_per: the column whose every value gives up its largest-axis "
                                  "rows to validation (e.g. each model size its largest budget)")
    validation_or: list[str] = Field(
        default_factory=list,
        description="with rule largest: further axes, for a test split that is the largest rows along any of "
                    "several (\"params >= X OR tokens >= Y\"); validation is then the union of every axis' "
                    "largest slice, each taking an equal share of validation_fraction")
    column: str = Field(default="split", description="the data column holding each row's split (train or test)")
    test_when: str | None = Field(
        default=None, description="instead of a split column: the rows that are test, as a comparison over columns "
                                  "or symbols, e.g. \"N >= 1e9\" (read through an allow-list, never evaluated)")
    drop_labels: list[str] = Field(
        default_factory=list, description="split labels besides train and test whose rows are left out (counted); "
                                          "any other label is an error")

    @model_validator(mode="after")
    def _per_with_its_rule(self) -> "SplitSpec":
        if (self.validation_rule == "largest_per") != (self.validation_per is not None):
            raise ValueError("validation_per goes with validation_rule = \"largest_per\" (and that rule needs it)")
        if self.validation_or and self.validation_rule != "largest":
            raise ValueError("validation_or goes with validation_rule = \"largest\"")
        if self.validation_axis in self.validation_or or len(set(self.validation_or)) < len(self.validation_or):
            raise ValueError("validation_or lists each axis once, and not validation_axis")
        return self

    def axes(self) -> list[str]:
        """The columns whose largest rows validation takes: validation_axis, then any validation_or axes."""
        return [self.validation_axis, *self.validation_or]

    def columns(self) -> list[str]:
        """Every column the validation rule reads."""
        return self.axes() + ([self.validation_per] if self.validation_per else [])

    def scale_columns(self) -> list[str]:
        """The columns the test split extrapolates along, as far as validation imitates it."""
        return [] if self.validation_rule == "interleaved" else self.columns()

    def describe_validation(self) -> str:
        """The validation rule in words, for prompts and reports."""
        if self.validation_rule == "interleaved":
            return (f"every {max(2, round(1 / self.validation_fraction))}th train row of each group along "
                    f"`{self.validation_axis}`, from the largest (an interpolation split)")
        if self.validation_rule == "largest_per":
            return (f"for every `{self.validation_per}` value of each group, its rows at their largest "
                    f"`{self.validation_axis}`, as the test split is the largest `{self.validation_per}` at its "
                    f"largest `{self.validation_axis}`; each such block is scored against its own spread, as the "
                    f"test split will be, and the validation R2 is the mean over blocks")
        if self.validation_or:
            share = self.validation_fraction / len(self.axes())
            return ("the union of the largest " + ", ".join(f"`{a}`" for a in self.axes()) + " train rows of each "
                    f"group (about {share:.0%} along each), as the test split is the largest rows along any of them")
        return f"the largest `{self.validation_axis}` train rows of each group (about {self.validation_fraction:.0%})"


class Task(Strict):
    name: str = Field(description=PLAIN_NAME)
    title: str
    description: str = ""
    paper: str = Field(
        description="short reference of the source paper, e.g. 'Hoffmann et al. 2022 (arXiv:2203.15556)'")
    group_column: str | None = Field(default=None, description="rows sharing a value get their own constants")
    targets: list[str] = Field(min_length=1)
    variables: list[Variable] = Field(min_length=1)
    constant_limit: int | None = Field(default=None, ge=1, description="max constants per target; none = no limit")
    target_range: tuple[float, float] | None = Field(
        default=None, description="[lower, upper] no target can leave by its definition (inf allowed), e.g. "
                                  "[0, inf] for a loss; laws that predict outside it rank last")
    split: SplitSpec
    converter: str = Field(default="tidy_csv",
                           description="how the origin files become the tidy frame (see discovery/tasks/converters.py)")
    sources: list[Source] = Field(default_factory=list, description="pinned origin files; not needed with `data`")
    data: str | None = Field(default=None, description="a local CSV, its path relative to this task file; its sha256 "
                                                       "is recorded on first use and checked afterwards")
    data_sha256: str | None = Field(default=None, description="the sha256 the local CSV must have")
    citation: str = Field(description="BibTeX entry (or entries) of the data's source paper(s)")
    human_laws: list[HumanLaw] = Field(default_factory=list)
    dropna: bool = Field(
        default=False, description="drop rows with a missing variable/target (counted), instead of refusing")
    sldbench: bool = Field(default=False, description="one of the eight SLDBench tasks (official split and metric)")

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not TASK_NAME.match(v):
            raise ValueError(f"task name {v!r} must be {PLAIN_NAME}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Task":
        if not self.sources and self.data is None:
            raise ValueError("give the data: `data = \"file.csv\"` (a local CSV, relative to the task file) or "
                             "[[sources]] (pinned origin files)")
        if self.data_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.data_sha256):
            raise ValueError("data_sha256 must be 64 lowercase hex digits")
        symbols = [v.symbol for v in self.variables]
        if self.target_range is not None and not self.target_range[0] < self.target_range[1]:
            raise ValueError(f"target_range {list(self.target_range)} must have lower < upper")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"variable symbols must be unique, got {symbols}")
        for law in self.human_laws:
            clash = set(law.constants) & set(symbols)
            if clash:
                raise ValueError(f"human law {law.name!r}: constants {sorted(clash)} clash with variable symbols")
        return self

    @property
    def path(self) -> Path | None:
        """The task file this task was read from (None when built in memory)."""
        return self._path

    @property
    def where(self) -> str:
        """How to name this task in a message: its file, or its name."""
        return str(self._path) if self._path is not None else f"task {self.name!r}"

    def data_path(self) -> Path | None:
        """The local CSV of `data`, resolved against the task file's folder."""
        if self.data is None:
            return None
        p = Path(self.data).expanduser()
        if not p.is_absolute() and self._path is not None:
            p = self._path.parent / p
        return p

    @property
    def symbols(self) -> list[str]:
        return [v.symbol for v in self.variables]

    @property
    def columns(self) -> list[str]:
        return [v.column for v in self.variables]

    def shape_priors(self) -> ShapePriors:
        """The declared shape priors, by variable position (see discovery.laws.shape)."""
        directions = tuple(Direction(i, v.symbol, -1 if v.monotone == "decreasing" else 1)
                           for i, v in enumerate(self.variables) if v.monotone)
        # the range is also followed along the scale axes; an interpolation split has none
        scale = self.split.scale_columns()
        axes = tuple((i, v.symbol) for i, v in enumerate(self.variables) if v.column in scale)
        return ShapePriors(directions, self.target_range, axes, self.same_unit_pairs())

    def same_unit_pairs(self) -> tuple[tuple[int, int], ...]:
        """Positions of positive variables that count the same thing (one unit: tokens and unique tokens). Their
        ratio means something (epochs), and an order between them that every row keeps (unique tokens never
        exceed tokens) holds wherever a law is checked beyond the data."""
        positive = [(i, v.unit.strip().lower()) for i, v in enumerate(self.variables)
                    if v.range and v.range[0] > 0 and v.unit.strip()]
        return tuple((i, j) for k, (i, a) in enumerate(positive) for j, b in positive[k + 1:] if a == b)

    def symbol_for_column(self) -> dict[str, str]:
        return {v.column: v.symbol for v in self.variables}


def _describe(err: ValidationError, path: Path) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{path}: field `{where}`: {first['msg']}{extra}"


def load_task_file(path: Path) -> Task:
    """Read and validate one task TOML; errors name the file and the field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskError(f"{path}: no such task file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TaskError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot be read: {exc}") from None
    try:
        task = Task.model_validate(raw)
    except ValidationError as exc:
        raise TaskError(_describe(exc, path)) from None
    if task.name != path.stem:
        raise TaskError(f"{path}: field `name`: is {task.name!r}, expected the file name {path.stem!r}")
    task._path = path.resolve()
    return task


def task_dirs() -> list[Path]:
    """Where task files are looked up, first match wins: every folder of KEPLER_TASKS_DIR (separated by
    os.pathsep), then ./tasks of the working directory, then the curated tasks."""
    dirs = [Path(d).expanduser() for d in os.environ.get("KEPLER_TASKS_DIR", "").split(os.pathsep) if d.strip()]
    dirs += [Path("tasks"), curated_tasks_dir()]
    out: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        key = d.resolve()
        if key not in seen and d.is_dir():
            seen.add(key)
            out.append(d)
    return out


def task_files() -> dict[str, Path]:
    """Every task name and the file it is read from (the first folder of `task_dirs` that has it)."""
    found: dict[str, Path] = {}
    for d in task_dirs():
        for p in sorted(d.glob("*.toml")):
            if TASK_NAME.match(p.stem):  # `...toml` names no task (its name would be `..`)
                found.setdefault(p.stem, p)
    return found


def shadowed() -> list[tuple[Path, Path]]:
    """(file used, file hidden by it) for every task name defined in more than one folder."""
    used = task_files()
    return [(used[p.stem], p) for d in task_dirs() for p in sorted(d.glob("*.toml"))
            if used[p.stem].resolve() != p.resolve()]


def list_tasks() -> list[str]:
    """Task names found in the task folders (a file whose name is not a plain name, such as `...toml`, is none)."""
    return sorted(task_files())


@lru_cache(maxsize=None)
def _load_cached(path: str, mtime: float) -> Task:
    return load_task_file(Path(path))


def load_task(name: str) -> Task:
    """Load a task by name (or by path to a .toml file)."""
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        return _load_cached(str(p.resolve()), p.stat().st_mtime)
    if not isinstance(name, str) or not TASK_NAME.match(name):  # refused before any path is built from it
        raise TaskError(f"task name {name!r} is not {PLAIN_NAME}; see `kepler tasks`")
    candidate = task_files().get(name)
    if candidate is not None:
        return _load_cached(str(candidate.resolve()), candidate.stat().st_mtime)
    known = ", ".join(list_tasks())
    raise TaskError(f"unknown task {name!r}; known tasks: {known}")
