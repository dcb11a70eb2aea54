"""Every fault case of the adversarial table (tests/faults.py) ends as promised: the exit code, one line naming what
and where, no traceback, and the earlier good weights and checkpoints byte-identical. The cases that need their own
processes (signals, a lock held by another process, a missing peer) are marked slow; `python -m tests.faults`
runs the whole table and prints held/total per category."""
import pytest

from tests import faults

CASES = faults.cases()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("faults")
    return faults.make_base(scratch / "base"), scratch


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=() if c.fast else pytest.mark.slow)
                                  for c in CASES])
def test_fault_case(case, base):
    base_dir, scratch = base
    held, what = faults.run_case(case, base_dir, scratch)
    assert held, what
