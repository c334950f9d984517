"""The data layer: every task loads with the documented row counts, the download path reproduces the
curated data.csv from the pinned origin files (sha256 enforced, cached), and bad data is refused with
one message naming the file, the column and the line."""
from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from discovery.tasks import converters, data
from discovery.tasks.data import DataError, load_frame
from discovery.tasks.spec import list_tasks, load_task

TASKS = list_tasks()
CHIN = "chinchilla_approach3"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("KEPLER_DATA_DIR", "KEPLER_CACHE_DIR", "KEPLER_ORIGIN_MIRROR", "KEPLER_TASKS_DIR"):
        monkeypatch.delenv(var, raising=False)
    data.clear_cache()
    yield
    data.clear_cache()


def _readme_counts(datasets_dir: Path) -> dict[str, tuple[int, int]]:
    text = (datasets_dir / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|\s*([\d,]+)\s*/\s*([\d,]+)", text, flags=re.M)
    return {name: (int(tr.replace(",", "")), int(te.replace(",", ""))) for name, tr, te in rows}


# --------------------------------------------------------------------------------------------------
# (a) every task loads, with the row counts of the datasets README.


def test_task_list_is_not_empty():
    assert CHIN in TASKS


@pytest.mark.parametrize("name", TASKS)
def test_task_loads_with_documented_counts(name, datasets_dir, monkeypatch):
    monkeypatch.setenv("KEPLER_DATA_DIR", str(datasets_dir))
    task = load_task(name)
    counts = _readme_counts(datasets_dir)
    assert name in counts, f"{name} is not in {datasets_dir / 'README.md'}"
    frame = load_frame(task)
    by_split = frame["split"].value_counts().to_dict()
    dropped = frame.attrs["dropped_rows_by_split"]
    if not task.dropna:
        assert frame.attrs["dropped_rows"] == 0
    got = (by_split.get("train", 0) + dropped["train"], by_split.get("test", 0) + dropped["test"])
    assert got == counts[name]
    assert set(frame["split"]) == {"train", "test"}
    assert frame["group"].map(type).eq(str).all()
    if task.group_column is None:
        assert set(frame["group"]) == {"all"}
    numeric = frame[[*task.columns, *task.targets, task.split.validation_axis]].to_numpy(dtype=float)
    assert np.isfinite(numeric).all()
    for var in task.variables:
        if var.range is not None:
            lo, hi = var.range
            assert lo <= frame[var.column].min() and frame[var.column].max() <= hi, var.column


def test_dropped_rows_are_counted(datasets_dir):
    frame = load_frame(load_task("observational_ruan2024"), data_dir=datasets_dir)
    assert frame.attrs["dropped_split_rows"] == {"no_flops": 25, "excluded": 1}
    assert frame.attrs["dropped_rows"] == sum(frame.attrs["dropped_rows_by_split"].values()) > 0
    assert frame[load_task("observational_ruan2024").targets].notna().all().all()


def test_in_process_cache_returns_copies(datasets_dir):
    task = load_task(CHIN)
    a = load_frame(task, data_dir=datasets_dir)
    a.loc[0, "loss"] = -1.0
    a.attrs["dropped_rows"] = 99
    b = load_frame(task, data_dir=datasets_dir)
    assert b.loc[0, "loss"] != -1.0 and b.attrs["dropped_rows"] == 0


# --------------------------------------------------------------------------------------------------
# (b) the download path: a loopback mirror serving <task>/<file> from <root>/<task>/origin/<file>.


class _Mirror:
    """Serves <url>/<task>/<file> from <root>/<task>/origin/<file> on 127.0.0.1, counting requests."""

    PREFIX = "/kepler"

    def __init__(self, root: Path):
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def translate_path(self, path):
                path = path.split("?", 1)[0].removeprefix(mirror.PREFIX)
                parts = [p for p in path.split("/") if p]
                if len(parts) != 2 or any(p in (".", "..") for p in parts):
                    return str(root / "__nowhere__")
                return str(root / parts[0] / "origin" / parts[1])

            def do_GET(self):
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.PREFIX}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror_factory(monkeypatch, tmp_path):
    mirrors = []

    def start(root: Path) -> _Mirror:
        m = _Mirror(root)
        mirrors.append(m)
        monkeypatch.setenv("KEPLER_ORIGIN_MIRROR", m.url)
        monkeypatch.setenv("KEPLER_CACHE_DIR", str(tmp_path / "cache"))
        return m

    yield start
    for m in mirrors:
        m.close()


def test_download_reproduces_data_csv_and_uses_cache(datasets_dir, mirror_factory, tmp_path):
    mirror = mirror_factory(datasets_dir)
    n_files = 0
    for name in TASKS:
        task = load_task(name)
        downloaded = load_frame(task)
        expected = load_frame(task, data_dir=datasets_dir)
        pd.testing.assert_frame_equal(downloaded, expected, check_exact=True)
        assert {k: v for k, v in downloaded.attrs.items() if k != "data_source"} == {
            k: v for k, v in expected.attrs.items() if k != "data_source"
        }
        # The converter's raw output is data.csv itself: columns, order, dtypes, values.
        paths = data.fetch_sources(task)
        raw = converters.get_converter(task.converter)(task, paths)
        pd.testing.assert_frame_equal(raw, pd.read_csv(datasets_dir / name / "data.csv"), check_exact=True)
        n_files += len(task.sources)
        for src in task.sources:
            assert f"/kepler/{name}/{src.file}" in mirror.requests
    assert len(mirror.requests) == n_files
    assert not list((tmp_path / "cache").rglob("*.part"))

    data.clear_cache()  # forget the frames: the second load must come from the files on disk
    for name in TASKS:
        load_frame(load_task(name))
    assert len(mirror.requests) == n_files, "second load made HTTP requests instead of using the cache"


def test_corrupted_cache_file_is_fetched_again(datasets_dir, mirror_factory, tmp_path):
    mirror = mirror_factory(datasets_dir)
    task = load_task(CHIN)
    load_frame(task)
    cached = tmp_path / "cache" / CHIN / "svg_extracted_data.csv"
    cached.write_bytes(cached.read_bytes() + b"1,2,#000,3,4,#000,5\n")
    data.clear_cache()
    frame = load_frame(task)
    assert len(mirror.requests) == 2
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == task.sources[0].sha256
    pd.testing.assert_frame_equal(frame, load_frame(task, data_dir=datasets_dir))


# The sldbench_parquet converter on all 8 SLDBench datasets, independent of their task files: targets
# as in SLDBench, features listed in reverse order (the converter keeps the parquet's column order).
SLDBENCH_TARGETS = {
    "parallel_scaling_law": ["loss"],
    "vocab_scaling_law": ["unigram_normalized_loss"],
    "sft_scaling_law": ["sft_loss"],
    "domain_mixture_scaling_law": [f"loss_domain_{i}" for i in range(1, 6)],
    "moe_scaling_law": ["loss_validation"],
    "data_constrained_scaling_law": ["loss"],
    "lr_bsz_scaling_law": ["lm_loss"],
    "easy_question_scaling_law": ["brier_score"],
}
SLDBENCH_EXTRAS = {"easy_question_scaling_law": ["flops", "model_name"]}


@pytest.mark.parametrize("name", sorted(SLDBENCH_TARGETS))
def test_sldbench_converter_reproduces_data_csv(name, datasets_dir):
    from discovery.tasks.spec import Task

    expected = pd.read_csv(datasets_dir / name / "data.csv")
    targets = SLDBENCH_TARGETS[name]
    features = [c for c in expected.columns
                if c not in {"group", "split", *targets, *SLDBENCH_EXTRAS.get(name, [])}][::-1]
    task = Task.model_validate({
        "name": name, "title": name, "paper": "-", "citation": "-", "group_column": "group",
        "targets": targets, "variables": [{"column": c, "symbol": f"x{i}"} for i, c in enumerate(features)],
        "split": {"rule": "-", "validation_axis": features[0]}, "converter": "sldbench_parquet",
        "sources": [{"file": f"{s}-00000-of-00001.parquet", "url": "-", "sha256": "0" * 64,
                     "format": "parquet", "split": s} for s in ("test", "train")],
    })
    origin = datasets_dir / name / "origin"
    got = converters.get_converter("sldbench_parquet")(task, {s.file: origin / s.file for s in task.sources})
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


# --------------------------------------------------------------------------------------------------
# (c) a checksum mismatch is refused and the file is not kept.


def test_checksum_mismatch_is_refused(datasets_dir, mirror_factory, tmp_path):
    root = tmp_path / "tampered"
    origin = root / CHIN / "origin"
    origin.mkdir(parents=True)
    good = (datasets_dir / CHIN / "origin" / "svg_extracted_data.csv").read_bytes()
    bad = good.replace(b"5.005581996196243", b"4.005581996196243", 1)
    assert bad != good
    (origin / "svg_extracted_data.csv").write_bytes(bad)
    mirror_factory(root)
    task = load_task(CHIN)
    with pytest.raises(DataError) as info:
        load_frame(task)
    msg = str(info.value)
    assert "svg_extracted_data.csv" in msg
    assert task.sources[0].sha256 in msg
    assert hashlib.sha256(bad).hexdigest() in msg
    cache = tmp_path / "cache" / CHIN
    assert not (cache / "svg_extracted_data.csv").exists()
    assert not list(cache.glob("*")), "the rejected bytes must not stay in the cache"


def test_unreachable_mirror_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KEPLER_ORIGIN_MIRROR", "http://127.0.0.1:9/nothing")  # discard port: refused
    monkeypatch.setenv("KEPLER_CACHE_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"svg_extracted_data\.csv.*download.*KEPLER_DATA_DIR"):
        load_frame(load_task(CHIN))


# --------------------------------------------------------------------------------------------------
# (d) bad CSVs: one clear message naming the file, the column and the line.


def _write_chinchilla(tmp_path: Path, datasets_dir: Path, edit) -> Path:
    lines = (datasets_dir / CHIN / "data.csv").read_text(encoding="utf-8").splitlines()
    lines = edit(lines)
    target = tmp_path / "data" / CHIN / "data.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def _set_cell(lines: list[str], line_no: int, column: str, value: str) -> list[str]:
    header = lines[0].split(",")
    cells = lines[line_no - 1].split(",")
    cells[header.index(column)] = value
    lines[line_no - 1] = ",".join(cells)
    return lines


def test_missing_data_file(tmp_path, monkeypatch):
    """A data folder without the task falls back to the pinned origin; when that fails too, one message says both."""
    monkeypatch.setenv("KEPLER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEPLER_ORIGIN_MIRROR", "http://127.0.0.1:9/nothing")  # discard port: refused
    monkeypatch.setenv("KEPLER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        load_frame(load_task(CHIN))
    msg = str(info.value)
    assert str(tmp_path / CHIN / "data.csv") in msg and "KEPLER_DATA_DIR" in msg
    assert "download of http://127.0.0.1:9/nothing/" in msg and "\n" not in msg  # the origin was tried


def test_missing_column(tmp_path, datasets_dir, monkeypatch):
    def drop_tokens(lines):
        return [",".join(c for i, c in enumerate(line.split(",")) if i != 1) for line in lines]

    path = _write_chinchilla(tmp_path, datasets_dir, drop_tokens)
    monkeypatch.setenv("KEPLER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DataError) as info:
        load_frame(load_task(CHIN))
    msg = str(info.value)
    assert str(path) in msg and "'tokens'" in msg
    assert "available columns: params, flops, loss, split" in msg


def test_non_numeric_cell(tmp_path, datasets_dir, monkeypatch):
    path = _write_chinchilla(tmp_path, datasets_dir, lambda ls: _set_cell(ls, 12, "params", "1.2B"))
    monkeypatch.setenv("KEPLER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DataError) as info:
        load_frame(load_task(CHIN))
    msg = str(info.value)
    assert str(path) in msg and "'params'" in msg and "line 12" in msg and "'1.2B'" in msg
    assert "not a number" in msg


def test_nan_cell(tmp_path, datasets_dir, monkeypatch):
    path = _write_chinchilla(tmp_path, datasets_dir, lambda ls: _set_cell(ls, 7, "loss", "NaN"))
    monkeypatch.setenv("KEPLER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DataError) as info:
        load_frame(load_task(CHIN))
    msg = str(info.value)
    assert str(path) in msg and "'loss'" in msg and "line 7" in msg and "dropna" in msg


def test_empty_and_infinite_cells_after_a_blank_line(tmp_path, datasets_dir, monkeypatch):
    # A blank line before the bad row: the reported number is still the line an editor shows.
    def edit(lines):
        lines = _set_cell(lines, 30, "tokens", "inf")
        return lines[:10] + [""] + lines[10:]

    path = _write_chinchilla(tmp_path, datasets_dir, edit)
    monkeypatch.setenv("KEPLER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"'tokens'.*line 31.*infinite") as info:
        load_frame(load_task(CHIN))
    assert str(path) in str(info.value)

    data.clear_cache()
    _write_chinchilla(tmp_path, datasets_dir, lambda ls: _set_cell(ls, 5, "flops", ""))
    with pytest.raises(DataError, match=r"'flops' \(validation axis\), line 5: missing value"):
        load_frame(load_task(CHIN))


def test_unknown_split_labels_are_refused_with_file_column_and_line(tmp_path, datasets_dir, monkeypatch):
    """A label that is neither train nor test (a typo such as `tset`) used to drop its row silently."""
    path = _write_chinchilla(tmp_path, datasets_dir, lambda ls: _set_cell(ls, 4, "split", "tset"))
    monkeypatch.setenv("KEPLER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DataError) as info:
        load_frame(load_task(CHIN))
    msg = str(info.value)
    assert str(path) in msg and "'split'" in msg and "line 4" in msg and "'tset'" in msg and "drop_labels" in msg
