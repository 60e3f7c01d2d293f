"""Every tutorial runs top to bottom: `python tutorials/NN_name.py` exits with status 0.

Tutorials assert their own claims, so a lesson whose numbers stop holding fails
here. New `tutorials/NN_*.py` files are picked up automatically.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 300
SLOW = set()  # file names of tutorials that take more than 60 s; they get the `slow` marker


def _param(path: Path):
    marks = [pytest.mark.slow] if path.name in SLOW else []
    return pytest.param(path, id=path.stem, marks=marks)


def test_tutorials_are_found():
    assert any(p.name == "01_autograd.py" for p in TUTORIALS), TUTORIALS


@pytest.mark.parametrize("path", [_param(p) for p in TUTORIALS])
def test_tutorial_runs(path: Path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "Agg"  # tutorials that plot must not open windows
    try:
        # run as a reader would, from the repository root
        result = subprocess.run([sys.executable, str(path.relative_to(ROOT))], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path.name} did not finish within {TIMEOUT_S} s")
    assert result.returncode == 0, (f"{path.name} exited with {result.returncode}\n"
                                    f"--- stdout (last 3000 chars) ---\n{result.stdout[-3000:]}\n"
                                    f"--- stderr (last 3000 chars) ---\n{result.stderr[-3000:]}")
