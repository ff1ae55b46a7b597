"""Every number a notebook's prose states about its own results is printed by that notebook (issue 15).

The checker lives in ``tests/notebook_claims.py``. Notebooks whose committed prose still states numbers
that none of their outputs print are listed in ``KNOWN`` with the count found when the check was added;
they are strict xfails, so a notebook that gets fixed fails here until it is removed from the list, and
a notebook not in the list must pass.
"""

import json
from pathlib import Path

import pytest

from notebook_claims import stated_numbers, unsupported_claims

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
KNOWN: dict[str, int] = {}  # notebook -> unsupported numbers of a notebook not yet fixed (empty since 2026-12-02)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_numbers_are_printed(path, request):
    if path.stem in KNOWN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{KNOWN[path.stem]} unsupported numbers (issue 15)"))
    bad = unsupported_claims(path)
    assert not bad, f"{path.name}: stated in markdown but printed by no output: {bad}"


def _nb(tmp_path, markdown, printed):
    nb = {"cells": [{"cell_type": "markdown", "source": markdown},
                    {"cell_type": "code", "source": "", "outputs": [{"output_type": "stream", "name": "stdout", "text": printed}]}]}
    p = tmp_path / "x.ipynb"
    p.write_text(json.dumps(nb))
    return p


def test_checker_finds_a_number_no_output_prints(tmp_path):
    assert unsupported_claims(_nb(tmp_path, "DDIM reaches FID 2.90 at 50 steps.", "fid 2.897 steps 50")) == []
    assert unsupported_claims(_nb(tmp_path, "DDIM reaches FID 2.90 at 50 steps.", "fid 3.1 steps 50")) == ["cell 0: '2.90'"]
    # rounding to the stated precision, percentages from fractions, ratios and ranges
    assert unsupported_claims(_nb(tmp_path, "It agrees 27 % of the time, 8.6× cheaper.", "agree 0.2712 ratio 8.63")) == []
    assert unsupported_claims(_nb(tmp_path, "It needs 5–10× fewer calls.", "ratios 4.3 and 12")) == ["cell 0: '5–10×'"] * 2


def test_checker_ignores_math_code_shapes_references_and_citations():
    md = ("## 3. Training\nImages are 32×32, `steps=1500`, $T=1000$, seed 004, eq. 12, notebook 05. "
          "Ho et al. (2020) report 3.75 bits/dim. A single digit 7 is not a claim.")
    assert stated_numbers(md) == []
    assert [v for _, v, _, _ in stated_numbers("We measured 0.088 and 1,000 samples.")] == [0.088, 1000.0]
