"""Kepler from Python, named like the command: discover a law, fit one, load a finished run.

    import kepler
    result = kepler.discover("sft_scaling_law", generations=10)      # or a DataFrame: target=, vars=, test=
    result.best.predict(df); result.best.latex(); result.equations_  # the law, and the Pareto front
    law = kepler.fit("chinchilla_approach3", "E + A*N**(-alpha) + B*D**(-beta)")
    result = kepler.load_run("results/sft_scaling_law/offline-seed0-...")
"""
from kepler.api import discover, fit, load_run
from kepler.result import Law, Result

__all__ = ["Law", "Result", "__version__", "discover", "fit", "load_run"]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("kepler-laws")
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = _version()
