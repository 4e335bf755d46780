"""The CI subset of the conformance matrix: a few representative rows, every column (``matrix.CI_ROWS``).

Every cell runs in a child process (``isolated.run_rows``, two at a time), so a kernel segfault fails one cell,
not the test session. Each cell must pass, except those listed in ``KNOWN_FAULTS`` (faults being fixed, marked
xfail and not strict); none may crash, and none may change the model when it reports itself unsupported (the
matrix turns that into a "fail" with "model changed" in the reason). The whole matrix runs in
``benchmarks/bench_conformance.py``.
"""

from __future__ import annotations

import pytest
from isolated import run_rows
from matrix import CI_ROWS, COLUMNS

#: (row, column) -> why it does not pass today; remove an entry once its fault is fixed
KNOWN_FAULTS: dict[tuple[str, str], str] = {
    ("timm/tf_mobilenetv3_small_minimal_100", "static_int8"): (
        "static int8 output cosine 0.971 vs float (< 0.98) on this random-weight mobile network; torch.ao's FX "
        "tracer cannot trace its TensorFlow same-padding convolutions, so there is no peer figure to compare with "
        "(on the rows it traces, torch.ao FX x86 reaches the same or lower cosines); issue 21's equalization, "
        "bias correction and clipping search target such networks"),
    ("timm/tf_mobilenetv3_small_minimal_100", "static_int8_hard"): (
        "with equalization, bias correction and a 3 s AdaRound the cosine is 0.968 (plain static int8: 0.971), still "
        "below 0.98 with no torch.ao figure (it cannot trace the same-padding convolutions); equalization finds few "
        "pairs in this network (hardswish between most layers) and AdaRound is fed float inputs (issue 21)"),
    ("timm/tf_mobilenetv3_small_minimal_100", "qat_static"): (
        "on CPUs without VNNI (7-bit activation codes) the ONNX check fails on max error alone (0.129 of the largest "
        "output, cosine 0.991): torch's fused quantize (quantize_per_tensor) rounds 1-2 values per million "
        "differently from ONNX's QuantizeLinear at near ties, one such input code of the stem flips, and this "
        "random-weight network amplifies it; the layers' float references agree with ONNX Runtime to 3e-7 (measured "
        "before check_agreement accepted disagreements within the model's noise floor; passes on VNNI CPUs)"),
}


@pytest.fixture(scope="module")
def cells() -> dict[tuple[str, str], dict]:
    return {(c["row"], c["column"]): c for c in run_rows(list(CI_ROWS), list(COLUMNS), workers=2, timeout=600)}


@pytest.mark.slow
@pytest.mark.parametrize("column", list(COLUMNS))
@pytest.mark.parametrize("row", CI_ROWS)
def test_cell(cells: dict[tuple[str, str], dict], row: str, column: str, request: pytest.FixtureRequest) -> None:
    cell = cells[(row, column)]
    where = f"{row} / {column}: {cell['status']} in {cell['phase']} at {cell['frame'] or '?'}: {cell['reason']}"
    assert "model changed" not in cell["reason"], where
    if (row, column) in KNOWN_FAULTS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAULTS[(row, column)], strict=False))
    assert cell["status"] != "crash", where
    assert cell["status"] == "pass", where
