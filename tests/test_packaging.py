"""A normal install works: the wheel carries the curated tasks and prompts, and its `kepler` runs outside the checkout.

The wheel is built from this checkout and installed, without dependencies, into a bare virtual environment
that sees the test environment's packages through a .pth line (not its editable install of Kepler); every
command runs from an empty working directory, so nothing can come from the source tree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _packages_in_tree() -> set[str]:
    found = set()
    for root in ("discovery", "evaluators", "kepler"):
        for init in (REPO / root).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(REPO).parts))
    return found


def test_every_package_of_the_tree_is_listed_for_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages_in_tree() <= listed
    assert {"discovery.tasks.curated", "discovery.search.proposers.prompts"} <= listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A bare venv with Kepler's wheel installed; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("kepler_laws-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True, timeout=120)
    venv_python = tmp / "venv" / "bin" / "python"
    site = subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # numpy, sympy, ...: not Kepler
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv_python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    names = zipfile.ZipFile(wheel).namelist()
    assert sum(n.startswith("discovery/tasks/curated/") and n.endswith(".toml") for n in names) == 12
    assert "discovery/search/proposers/prompts/llm_system.md" in names and "kepler/__init__.py" in names
    return tmp / "venv" / "bin"


SCRIPT = """
import json, sys
from discovery.cli import main
runs = [["tasks", "--json"], ["fit", "parallel_scaling_law", "E + A*(N/1e9)**(-a)", "--starts", "16", "--json"],
        ["bench", "parallel_scaling_law", "--json", "--out", "bench"],
        ["discover", "parallel_scaling_law", "--generations", "1", "--islands", "1", "--population", "4",
         "--children", "4", "--executor", "serial", "--out", "run"]]
import contextlib, discovery
codes = []
for i, argv in enumerate(runs):
    with open(f"out{i}.txt", "w") as out, contextlib.redirect_stdout(out):
        codes.append(main(argv))
print(json.dumps({"file": discovery.__file__, "exits": codes}))
"""


def test_the_installed_wheel_runs_tasks_fit_bench_and_discover(installed, tmp_path):
    """`kepler --version` through the console script; the four commands through the installed copy's entry point
    (one interpreter, so the test stays quick), all from an empty working directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KEPLER_TASKS_DIR")}
    version = subprocess.run([str(installed / "kepler"), "--version"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == "kepler 0.1.0", version.stderr
    done = subprocess.run([str(installed / "python"), "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert str(installed.parent) in report["file"]  # the installed copy, not the checkout
    assert report["exits"] == [0, 0, 0, 0], done.stderr[-3000:]
    assert len(json.loads((tmp_path / "out0.txt").read_text())) == 12
    assert json.loads((tmp_path / "out1.txt").read_text())["test"]["r2"] > 0.5
    assert "best" in json.loads((tmp_path / "run" / "best.json").read_text())
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())[0]["task"] == "parallel_scaling_law"
