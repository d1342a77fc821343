"""Shared machinery of the Python tests, which run under mpirun (one pytest
per rank, in step: every rank collects the same tests in the same order;
pytest-rank.sh starts them, `make test-python` runs them all).
"""

import glob
import json
import math
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # python/, for import clipmpi

RANK = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
SIZE = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))

# Tolerances of test/testdata/golden/README.md: 1e-9 of each array's largest
# magnitude in float64, 1e-12 absolute for ClipLoss's bias gradient
# (rounding noise). float32: the inputs rounded to float32; gradients that
# cancel to ~1e-14 or underflow can only be matched absolutely (as in the C
# test, capi/ctest/golden.c, whose worst measured deviation was 1.9e-5).
REL64, CLIP_BIAS_ABS64 = 1e-9, 1e-12
REL32, ABS32 = 5e-5, 1e-6


def golden_dir():
    d = os.environ.get("CLIPMPI_GOLDEN")
    return d or os.path.join(HERE, "..", "..", "test", "testdata", "golden")


def load_cases(world=None):
    """The golden cases (dicts with "file" added), sorted by file name; only
    those of world size `world` when given."""
    files = sorted(glob.glob(os.path.join(golden_dir(), "*.json")))
    if not files:
        raise RuntimeError(f"no golden cases in {golden_dir()}; set CLIPMPI_GOLDEN")
    cases = []
    for f in files:
        with open(f) as fh:
            c = json.load(fh)
        c["file"] = os.path.basename(f)[:-5]
        if world is None or c["world_size"] == world:
            cases.append(c)
    return cases


def mismatch(what, got, want, rel, abs_tol=0.0):
    """"" when every element of got is within rel * max|want| + abs_tol of
    want (exact zeros for an all-zero want), else the worst element."""
    got = [float(x) for x in _flat(got)]
    want = [float(x) for x in _flat(want)]
    if len(got) != len(want):
        return f"{what}: {len(got)} values, want {len(want)}"
    scale = max((abs(x) for x in want), default=0.0)
    tol = rel * scale + abs_tol
    worst, at = -1.0, -1
    for i, (g, w) in enumerate(zip(got, want)):
        d = abs(g - w)
        if not d <= tol and (d > worst or math.isnan(d)):
            worst, at = d, i
    if at < 0:
        return ""
    return f"{what}[{at}] = {got[at]!r}, want {want[at]!r} (|diff| {worst:.3g} > {tol:.3g})"


def _flat(x):
    if hasattr(x, "detach"):
        return x.detach().reshape(-1).tolist()
    if isinstance(x, (list, tuple)):
        out = []
        for v in x:
            out.extend(_flat(v))
        return out
    return [x]


@pytest.fixture(scope="session")
def rank():
    return RANK


@pytest.fixture(scope="session")
def size():
    return SIZE
