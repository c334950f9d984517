"""A run's derived results computed once and kept in the run directory: the bootstrap, human-law fits.

`kepler export`, `plot`, `report` and `derive` all need the same 1,000-resample bootstrap of the same
law; the first one to run stores it in `RUN_DIR/cache/` under a key that hashes everything the result
depends on (the law, its constants, the constant specs, the fit options, the bootstrap options and the
train rows themselves, plus a format version), so a changed law, constants, options or data misses the
cache and recomputes. Files are written atomically (temporary file, then rename); a cache that cannot
be read or written is skipped with the result recomputed, never an error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from discovery.laws.fit import FitOptions
from discovery.laws.law import Law
from discovery.laws.uncertainty import Bootstrap, BootstrapOptions, bootstrap_law
from discovery.tasks.dataset import Dataset
from discovery.tasks.values import ConstantSpec

VERSION = 1  # bump when the bootstrap's algorithm or this file format changes
Key = tuple[str, int]


def data_fingerprint(data: Dataset) -> str:
    h = hashlib.sha256()
    for a in (data.X, data.Y, data.rows):
        h.update(np.ascontiguousarray(a, dtype=float).tobytes())
    h.update("\x1f".join(map(str, data.groups.tolist())).encode())
    return h.hexdigest()


def _specs_json(specs: dict[str, ConstantSpec] | None) -> dict | None:
    if specs is None:
        return None
    return {k: {"init": repr(float(s.init)), "bounds": [repr(float(b)) for b in s.bounds]}
            for k, s in sorted(specs.items())}


def cache_key(kind: str, law: Law, data: Dataset, specs: dict[str, ConstantSpec] | None, fit_options: FitOptions,
              point: dict[Key, np.ndarray] | None = None, options: BootstrapOptions | None = None,
              extra: dict | None = None) -> str:
    """A short hash of everything a cached result depends on."""
    content = {
        "version": VERSION, "kind": kind, "law": law.text, "hash": law.hash, "constants": law.constant_names,
        "point": None if point is None else {f"{g}|{t}": [repr(float(v)) for v in theta]
                                             for (g, t), theta in sorted(point.items())},
        "specs": _specs_json(specs), "fit": {k: repr(v) for k, v in dataclasses.asdict(fit_options).items()
                                         if not (k == "fitter" and v == "trf")},  # keys from before fitters existed
        "options": None if options is None else {k: repr(v) for k, v in dataclasses.asdict(options).items()
                                                 if k != "n_jobs"},
        "data": data_fingerprint(data), "extra": extra,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]


def _write_atomic(path: Path, write: Callable[[Path], None]) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True
    except OSError:
        return False


def _save_bootstrap(path: Path, boot: Bootstrap) -> bool:
    keys = sorted(boot.samples)
    arrays = {}
    for i, key in enumerate(keys):
        arrays[f"samples_{i}"] = boot.samples[key]
        arrays[f"point_{i}"] = np.asarray(boot.point[key], dtype=float)
        arrays[f"residuals_{i}"] = np.asarray(boot.residuals.get(key, np.zeros(0)), dtype=float)
    meta = {"keys": [[g, t] for g, t in keys], "constant_names": boot.constant_names,
            "options": dataclasses.asdict(boot.options), "log_residuals": boot.log_residuals,
            "seconds": boot.seconds, "fallbacks": [boot.fallbacks.get(k, 0) for k in keys]}
    arrays["meta"] = np.array(json.dumps(meta))

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)

    return _write_atomic(path, write)


def _load_bootstrap(path: Path) -> Bootstrap | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            keys = [(str(g), int(t)) for g, t in meta["keys"]]
            samples = {k: z[f"samples_{i}"] for i, k in enumerate(keys)}
            point = {k: z[f"point_{i}"] for i, k in enumerate(keys)}
            residuals = {k: z[f"residuals_{i}"] for i, k in enumerate(keys)}
        return Bootstrap(constant_names=meta["constant_names"], point=point, samples=samples,
                         options=BootstrapOptions(**meta["options"]), log_residuals=bool(meta["log_residuals"]),
                         residuals=residuals, seconds=float(meta["seconds"]),
                         fallbacks=dict(zip(keys, meta["fallbacks"], strict=True)))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def cached_bootstrap(cache_dir: Path | None, law: Law, data: Dataset, point: dict[Key, np.ndarray],
                     specs: dict[str, ConstantSpec] | None, fit_options: FitOptions,
                     options: BootstrapOptions, progress: Callable[[int, int], None] | None = None
                     ) -> tuple[Bootstrap, bool]:
    """(bootstrap, whether it came from the cache); computed and stored when `cache_dir` has none."""
    path = None
    if cache_dir is not None:
        key = cache_key("bootstrap", law, data, specs, fit_options, point, options)
        path = Path(cache_dir) / f"bootstrap-{key}.npz"
        if path.is_file():
            boot = _load_bootstrap(path)
            if boot is not None:
                return boot, True
    boot = bootstrap_law(law, data, point, specs, fit_options, options, progress=progress)
    if path is not None:
        _save_bootstrap(path, boot)
    return boot, False


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save_json(path: Path, content: dict) -> bool:
    return _write_atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(content, indent=1)))
