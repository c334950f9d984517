"""The data layer: load a task's tidy frame, from a local CSV, a local data folder or pinned upstream files.

Where the rows of a task come from, first match wins:

* the task's own ``data = "file.csv"`` (a path relative to the task file): its sha256 is recorded on
  first use in ``<task>.sha256`` beside the task file (or given as ``data_sha256``) and checked after;
* ``KEPLER_DATA_DIR`` (or ``data_dir=``; several folders separated by os.pathsep): the first
  ``<dir>/<task.name>/data.csv``;
* otherwise, or when no folder has the task: download every ``Source`` of the task into a cache
  (``~/.cache/kepler/<task>/``, or ``$KEPLER_CACHE_DIR/<task>/``), check each file's sha256 against the
  pinned one (a mismatch is refused and the file deleted), and run the task's converter
  (``discovery/tasks/converters.py``) on them. ``KEPLER_ORIGIN_MIRROR=http://host:port/prefix`` fetches
  ``<mirror>/<task.name>/<file>`` instead of the pinned URL; the sha256 is enforced all the same.

The frame is then validated: every column the task names must exist; variable, target and
validation-axis cells must be finite numbers inside the declared ``range``; split labels must be
train, test or one of the task's ``drop_labels``; train and test must both have rows. A problem raises
``DataError`` with one message that names the file, the column, the row (the line number to open in an
editor) and how to fix it. A task's ``split.test_when`` rule (an allow-listed comparison, see
``discovery.tasks.rules``) makes the split instead of a split column.

Rows labelled with one of ``drop_labels`` are left out; with ``task.dropna`` rows with a missing
variable/target are dropped too. What was dropped is recorded in ``frame.attrs``:

* ``dropped_rows``: number of rows dropped for a missing variable/target/validation-axis value;
* ``dropped_rows_by_split``: the same, per split (``{"train": n, "test": m}``);
* ``dropped_split_rows``: rows dropped because of their split label (``{"no_flops": 25, ...}``);
* ``data_source``: where the rows came from (a path, or the origin URLs).

The frame always has a string column ``group`` (the task's group column as str, or ``"all"``).
"""
from __future__ import annotations

import csv
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from discovery.tasks import converters, rules

if TYPE_CHECKING:
    from discovery.tasks.spec import Source, Task

SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT = 60.0  # seconds, per connection attempt / read
_CHUNK = 1 << 16
_USER_AGENT = "kepler-laws/0.1 (+https://github.com)"


class DataError(ValueError):
    """The data of a task is missing or malformed; the message names file, column, row and the fix."""


# --------------------------------------------------------------------------------------------------
# In-process cache: (task definition, where the rows come from) -> validated frame.

_FRAMES: dict[tuple, pd.DataFrame] = {}


def clear_cache() -> None:
    """Forget the frames loaded in this process (the download cache on disk is kept)."""
    _FRAMES.clear()


def _copy(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy(deep=True)
    out.attrs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in frame.attrs.items()}
    return out


# --------------------------------------------------------------------------------------------------
# Public entry point.


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The local data folders: `data_dir`, else every folder of KEPLER_DATA_DIR (os.pathsep-separated)."""
    raw = str(data_dir) if data_dir is not None else (os.environ.get("KEPLER_DATA_DIR") or "")
    return [Path(d).expanduser() for d in raw.split(os.pathsep) if d.strip()]


def load_frame(task: "Task", *, data_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The validated tidy frame of `task` (a fresh copy; see the module docstring)."""
    try:
        converters.get_converter(task.converter)
    except converters.ConverterError as exc:
        raise DataError(f"{task.where}: field `converter`: {exc}") from None
    local = task.data_path()
    if local is not None:
        return _load_csv(task, local, check=lambda: check_data_sha256(task, local), missing=(
            f"{local}: no such data file (field `data` of {task.where}); the path is relative to the task file"))
    folders = data_dirs(data_dir)
    found = next((d / task.name / "data.csv" for d in folders if (d / task.name / "data.csv").is_file()), None)
    if found is not None or (folders and not task.sources):
        path = found if found is not None else folders[0] / task.name / "data.csv"
        return _load_csv(task, path, check=lambda: _check_mirror_sha256(task, path))
    try:
        return _download_frame(task, cache_dir)
    except DataError as exc:
        if not folders:
            raise
        tried = ", ".join(str(d / task.name / "data.csv") for d in folders)
        raise DataError(f"{task.name}: not in the data folders (KEPLER_DATA_DIR: {tried}), and {exc}") from None


def _load_csv(task: "Task", path: Path, check, missing: str | None = None) -> pd.DataFrame:
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    key = (task.model_dump_json(), str(task.path), "csv", str(path.resolve()), stamp)
    if stamp is not None and key in _FRAMES:
        return _copy(_FRAMES[key])
    if stamp is None and missing is not None:
        raise DataError(missing)
    raw = _read_data_csv(task, path)
    check()
    frame = _validate(task, raw, where=str(path), row_ref=lambda i: _csv_line(path, i))
    frame.attrs["data_source"] = str(path)
    _FRAMES[key] = frame
    return _copy(frame)


def _download_frame(task: "Task", cache_dir: str | os.PathLike | None) -> pd.DataFrame:
    if not task.sources:
        raise DataError(f"{task.where}: no data: give `data = \"file.csv\"` or [[sources]], or set KEPLER_DATA_DIR")
    cache = _task_cache_dir(task, cache_dir)
    mirror = os.environ.get("KEPLER_ORIGIN_MIRROR") or None
    key = (task.model_dump_json(), "download", str(cache), mirror)
    if key in _FRAMES:
        return _copy(_FRAMES[key])
    paths = fetch_sources(task, cache_dir=cache_dir)
    try:
        convert = converters.get_converter(task.converter)
        raw = convert(task, paths)
    except converters.ConverterError as exc:
        raise DataError(f"task {task.name!r}: {exc}") from None
    where = f"the table converted from {', '.join(str(p) for p in paths.values())} (converter {task.converter!r})"
    frame = _validate(task, raw, where=where, row_ref=lambda i: f"row {i + 1}")
    frame.attrs["data_source"] = ", ".join(_source_url(task, s, mirror) for s in task.sources)
    _FRAMES[key] = frame
    return _copy(frame)


def frame_from_table(task: "Task", table: pd.DataFrame, where: str = "the data frame") -> pd.DataFrame:
    """Validate rows given in memory (a pandas DataFrame) as the task's tidy frame."""
    frame = _validate(task, table, where=where, row_ref=lambda i: f"row {i}")
    frame.attrs["data_source"] = where
    return frame


# --------------------------------------------------------------------------------------------------
# Checksums of local data.


def sha256_record(task: "Task") -> Path | None:
    """Where the sha256 of a task's local CSV is recorded on first use: `<task>.sha256` beside the task file."""
    return task.path.with_suffix(".sha256") if task.path is not None else None


def check_data_sha256(task: "Task", path: Path) -> None:
    """The local CSV must have the sha256 the task declares, or the one recorded when it was first used."""
    actual = sha256_file(path)
    if task.data_sha256 is not None:
        if actual != task.data_sha256:
            raise DataError(f"{path}: sha256 {actual} differs from `data_sha256` {task.data_sha256} in {task.where}; "
                            "the data changed since the task was written: restore it, or update data_sha256")
        return
    record = sha256_record(task)
    if record is None:
        return
    if record.is_file():
        recorded = record.read_text(encoding="utf-8").split()[0] if record.read_text(encoding="utf-8").strip() else ""
        if recorded != actual:
            raise DataError(f"{path}: sha256 {actual} differs from {recorded or 'nothing'}, recorded in {record} when "
                            "the task first used it; the data changed: restore it, or delete that file to accept it")
        return
    try:
        record.write_text(f"{actual}  {task.data}\n", encoding="utf-8")
    except OSError:
        pass  # a read-only task folder: nothing recorded, nothing refused


def _check_mirror_sha256(task: "Task", path: Path) -> None:
    """A user task's data.csv in a data folder is its one tidy_csv source: its pinned sha256 applies."""
    if task.converter == "tidy_csv" and len(task.sources) == 1 and path.is_file():
        actual = sha256_file(path)
        if actual != task.sources[0].sha256:
            raise DataError(f"{path}: sha256 {actual} differs from the pinned {task.sources[0].sha256} of source "
                            f"{task.sources[0].file!r} in {task.where}; restore the file or update the sha256")


# --------------------------------------------------------------------------------------------------
# Reading data.csv.


def _read_data_csv(task: "Task", path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            f"{path}: no such data file for task {task.name!r}. The data folder (KEPLER_DATA_DIR) is "
            f"{path.parent.parent}; set KEPLER_DATA_DIR to the folder that holds {task.name}/data.csv, "
            f"or unset it to download the task's pinned origin files and convert them."
        )
    dtype = {task.group_column: str} if task.group_column else None
    try:
        return pd.read_csv(path, dtype=dtype)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; it needs a header line and one line per row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({exc}); fix the file or re-create it") from None


# --------------------------------------------------------------------------------------------------
# Validation.


def _csv_line(path: Path, i: int) -> str:
    """Record i (0-based, after the header) of a CSV file as the line an editor shows (header = line 1).

    Counts physical lines like pandas reads records: blank lines are skipped, and a quoted field may
    span several lines (the record's first line is reported).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            next(reader, None)
            n = -1
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    break
                if not row or all(c == "" for c in row) and len(row) <= 1:
                    continue
                n += 1
                if n == i:
                    return f"line {start}"
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return f"line {i + 2}"


def _validate(task: "Task", raw: pd.DataFrame, *, where: str, row_ref) -> pd.DataFrame:
    df = raw.reset_index(drop=True)
    cols = list(df.columns)

    numeric = list(dict.fromkeys([*task.columns, *task.targets, *task.split.columns()]))
    group_cols = [task.group_column] if task.group_column else []
    split_col = task.split.column
    rule = task.split.test_when
    required = list(dict.fromkeys([*group_cols, *numeric, *([] if rule else [split_col])]))
    for col in required:
        if col not in df.columns:
            role = _role(task, col)
            raise DataError(
                f"{where}: column {col!r} ({role}) is missing; available columns: {', '.join(map(str, cols))}. "
                f"Add the column to the data, or fix the column name in task {task.name!r}."
            )

    # split: train/test kept, the task's drop_labels dropped and counted, anything else refused.
    if rule:
        split = _split_by_rule(task, df, rule, where, row_ref)
    else:
        split = df[split_col]
    labels = ", ".join([*SPLITS, *task.split.drop_labels])
    empty = split.isna() | (split.astype(str).str.strip() == "")
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"{where}: column {split_col!r}, {row_ref(i)}: empty split cell; write one of: {labels}.")
    split = split.astype(str).str.strip()
    unknown = ~split.isin([*SPLITS, *task.split.drop_labels]).to_numpy()
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"{where}: column {split_col!r}, {row_ref(i)}: split label {split.iloc[i]!r} is not one of: {labels} "
            f"({int(unknown.sum())} such cell(s)). Fix the label, or list it in `drop_labels` of [split] in "
            f"{task.where} to leave such rows out.")
    keep = split.isin(SPLITS).to_numpy()
    dropped_split = {str(k): int(v) for k, v in split[~keep].value_counts(sort=False).items()}

    # numeric columns: every cell a number (NaN tolerated only with dropna, inf never).
    values: dict[str, np.ndarray] = {}
    for col in numeric:
        s = df[col]
        if s.dtype == bool or pd.api.types.is_bool_dtype(s):
            values[col] = s.to_numpy(dtype=float)
            continue
        num = pd.to_numeric(s, errors="coerce")
        bad = (num.isna() & s.notna() & (s.astype(str).str.strip() != "")).to_numpy() & keep
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: column {col!r} ({_role(task, col)}), {row_ref(i)}: "
                f"{str(s.iloc[i])!r} is not a number ({int(bad.sum())} such cell(s) in the column). "
                f"Write a plain number such as 1.5e9, with no units or thousands separators."
            )
        values[col] = num.to_numpy(dtype=float)

    missing = np.zeros(len(df), dtype=bool)
    for col in numeric:
        v = values[col]
        inf = np.isinf(v) & keep
        if inf.any():
            i = int(np.flatnonzero(inf)[0])
            raise DataError(
                f"{where}: column {col!r} ({_role(task, col)}), {row_ref(i)}: "
                f"infinite value {df[col].iloc[i]!r}; every value must be finite. Fix or remove the row."
            )
        nan = np.isnan(v) & keep
        if nan.any() and not task.dropna:
            i = int(np.flatnonzero(nan)[0])
            raise DataError(
                f"{where}: column {col!r} ({_role(task, col)}), {row_ref(i)}: "
                f"missing value (empty or NaN; {int(nan.sum())} such cell(s) in the column). Fill it in "
                f"or remove the row; or set `dropna = true` in task {task.name!r} to drop such rows."
            )
        missing |= nan

    if task.group_column:
        g = df[task.group_column]
        gbad = (g.isna().to_numpy() | (g.astype(str).str.strip() == "").to_numpy()) & keep & ~missing
        if gbad.any():
            i = int(np.flatnonzero(gbad)[0])
            raise DataError(
                f"{where}: column {task.group_column!r} (group column), {row_ref(i)}: "
                f"empty group; every row needs a group label."
            )

    for var in task.variables:
        if var.range is None:
            continue
        lo, hi = var.range
        v = values[var.column]
        slack = 1e-9 * max(abs(lo), abs(hi), 1e-300)
        outside = keep & ~missing & ((v < lo - slack) | (v > hi + slack))
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise DataError(
                f"{where}: column {var.column!r} (variable {var.symbol}), {row_ref(i)}: "
                f"{df[var.column].iloc[i]} lies outside the declared range [{lo:g}, {hi:g}] "
                f"({int(outside.sum())} such row(s)). Fix the row, or "
                f"widen `range` of variable {var.symbol} in {task.where}.")

    final = keep & ~missing
    dropped_missing = {s: int((missing & keep & (split == s).to_numpy()).sum()) for s in SPLITS}
    out = df.loc[final].reset_index(drop=True)
    for col in numeric:
        if not pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col]):
            out[col] = pd.to_numeric(out[col]).astype(float)
    out["split"] = split[final].reset_index(drop=True)
    if task.group_column:
        out["group"] = out[task.group_column].astype(str)
    else:
        out["group"] = "all"
    out["group"] = out["group"].astype(str)
    if not (out["split"] == "train").any():
        raise DataError(f"{where}: no train rows left for task {task.name!r}; the fit needs at least one")
    if not (out["split"] == "test").any():
        how = f"the rule {rule!r} selects none" if rule else f"no row of column {split_col!r} says test"
        raise DataError(f"{where}: no test rows for task {task.name!r} ({how}); a law is scored on test rows, so "
                        "mark the larger-scale rows as test")

    out.attrs["dropped_rows"] = int(sum(dropped_missing.values()))
    out.attrs["dropped_rows_by_split"] = dropped_missing
    out.attrs["dropped_split_rows"] = dropped_split
    return out


def _split_by_rule(task: "Task", df: pd.DataFrame, rule: str, where: str, row_ref) -> pd.Series:
    """`train`/`test` per row from the task's test_when rule (test where it holds)."""
    try:
        parsed = rules.parse_rule(rule)
    except rules.RuleError as exc:
        raise DataError(f"{task.where}: field `split.test_when`: {exc}") from None
    by_symbol = task.symbol_for_column()
    columns = {}
    for name in parsed.names:
        column = name if name in df.columns else {s: c for c, s in by_symbol.items()}.get(name)
        if column is None or column not in df.columns:
            raise DataError(f"{task.where}: field `split.test_when`: {name!r} is neither a column of {where} nor a "
                            f"variable symbol (columns: {', '.join(map(str, df.columns))})")
        columns[name] = df[column]
    try:
        mask = parsed.evaluate(columns)
    except rules.RuleError as exc:
        raise DataError(f"{where}: test rule {rule!r}: {exc}") from None
    bad = np.flatnonzero(pd.isna(pd.Series(mask)).to_numpy())
    if len(bad):
        raise DataError(f"{where}: {row_ref(int(bad[0]))}: the test rule {rule!r} cannot be decided (a missing value)")
    return pd.Series(np.where(np.asarray(mask, dtype=bool), "test", "train"), index=df.index)


def _role(task: "Task", col: str) -> str:
    roles = []
    if col in task.columns:
        roles.append("variable")
    if col in task.targets:
        roles.append("target")
    if col in task.split.axes():
        roles.append("validation axis")
    if col == task.split.validation_per:
        roles.append("validation per-value column")
    if col == task.group_column:
        roles.append("group column")
    if col == task.split.column:
        roles.append("train/test split")
    return ", ".join(roles) or "column"


# --------------------------------------------------------------------------------------------------
# Downloading origin files.


def _task_cache_dir(task: "Task", cache_dir: str | os.PathLike | None) -> Path:
    base = cache_dir if cache_dir is not None else (os.environ.get("KEPLER_CACHE_DIR") or None)
    root = Path(base).expanduser() if base is not None else Path.home() / ".cache" / "kepler"
    return root / task.name


def _source_url(task: "Task", source: "Source", mirror: str | None) -> str:
    if mirror:
        return f"{mirror.rstrip('/')}/{task.name}/{source.file}"
    return source.url


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sources(task: "Task", *, cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Make sure every origin file of `task` is in the cache with its pinned sha256; return the paths."""
    cache = _task_cache_dir(task, cache_dir)
    mirror = os.environ.get("KEPLER_ORIGIN_MIRROR") or None
    paths: dict[str, Path] = {}
    for src in task.sources:
        if Path(src.file).name != src.file or src.file in ("", ".", ".."):
            raise DataError(f"task {task.name!r}: source file name {src.file!r} must be a plain file name")
        target = cache / src.file
        if target.is_file():
            if sha256_file(target) == src.sha256:
                paths[src.file] = target
                continue
            target.unlink()  # stale or corrupted cache entry: fetch it again
        _download(_source_url(task, src, mirror), target, src.sha256, task.name)
        paths[src.file] = target
    return paths


def _download(url: str, target: Path, sha256: str, task_name: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT) as resp:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"{target.name}: download of {url} for task {task_name!r} failed ({reason}). Check the network "
            f"(or KEPLER_ORIGIN_MIRROR), or set KEPLER_DATA_DIR to a folder holding {task_name}/data.csv."
        ) from None
    actual = h.hexdigest()
    if actual != sha256:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{target.name}: sha256 mismatch for {url} (task {task_name!r}): expected {sha256}, got {actual}. "
            f"The file was deleted and not used. The upstream bytes changed or the download was corrupted "
            f"(or KEPLER_ORIGIN_MIRROR serves a different file); retry, or set KEPLER_DATA_DIR."
        )
    os.replace(tmp, target)
