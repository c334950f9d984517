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


@pytest.fixture(scope="session", autouse=True)
def _own_cache_and_mirror(tmp_path_factory, datasets_dir):
    """For the whole session, before any fixture of a wider scope loads a task: Kepler's cache folder
    (downloads, the index of runs written with --out) is the session's own, not ~/.cache, and data comes
    from the local mirror (this machine has no route to the origin URLs; the download path is tested against
    a loopback server instead). A test may still point either variable elsewhere with `monkeypatch`."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("KEPLER_CACHE_DIR"):
            mp.setenv("KEPLER_CACHE_DIR", str(tmp_path_factory.mktemp("kepler-cache")))
        if not os.environ.get("KEPLER_DATA_DIR"):
            mp.setenv("KEPLER_DATA_DIR", str(datasets_dir))
        yield
