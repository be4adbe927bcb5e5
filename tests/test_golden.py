"""Golden runs (tests/support/golden.py): the default network and data for a few iterations on 4
ranks, and ResNet-8 through the general RADMM trainer (two-colour, 3 ranks) give the numbers
and files recorded before the algorithms were reorganised into packages."""

import pytest

from tests.support.golden import collect, comparable, differences, load, run_case


@pytest.mark.parametrize("case", ["main-small", "resnet8-two-colour"])
def test_golden_run_is_unchanged(tmp_path, case):
    run_dir = str(tmp_path / "run")
    run_case(case, run_dir, timeout=600)
    # float64 runs: a relative 1e-9 allows another CPU's rounding, not a changed algorithm
    diff = differences(comparable(load(case)), comparable(collect(run_dir)), rtol=1e-9)
    assert not diff, diff[:10]
