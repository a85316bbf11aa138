"""Loading a bench/ script in a test: the scripts are files, not a package, so they are imported by path."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench_script(stem: str):
    """bench/<stem>.py as a module (its top level runs: the scripts only define things there)."""
    spec = importlib.util.spec_from_file_location(stem, BENCH / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
