"""Shared fixtures."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The curated datasets folder: $KEPLER_DATA_DIR (relative paths are taken from the repo root),
    else <repo>/../shared/datasets."""
    env = os.environ.get("KEPLER_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "datasets"
    if not path.is_absolute():
        path = REPO / path
    path = path.resolve()
    if not (path / "README.md").is_file():
        pytest.fail(f"datasets folder not found at {path}; set KEPLER_DATA_DIR to it")
    return path


@pytest.fixture(scope="session")
def _cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kepler-cache")


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, _cache_dir):
    """Kepler's cache folder (downloads, the index of runs written with --out) is the session's own, not ~/.cache."""
    if not os.environ.get("KEPLER_CACHE_DIR"):
        monkeypatch.setenv("KEPLER_CACHE_DIR", str(_cache_dir))


@pytest.fixture(autouse=True)
def _mirrored_data(monkeypatch, datasets_dir):
    """Tests read the local mirror unless a test points KEPLER_DATA_DIR elsewhere (this machine has no
    route to the origin URLs; the download path is tested against a loopback server instead)."""
    if not os.environ.get("KEPLER_DATA_DIR"):
        monkeypatch.setenv("KEPLER_DATA_DIR", str(datasets_dir))
