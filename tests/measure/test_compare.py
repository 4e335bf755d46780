"""The before/after comparison: ratios by hand, display rows, markdown, JSON, the rich table and the unit helpers."""

import json

import pytest

import slimtorch as st
from slimtorch.measure.compare import Comparison, human_bytes, human_count


def _metrics(**values) -> st.Metrics:
    fields = dict(params=1000, nonzero_params=1000, size_bytes=4096, flops=2000, macs=1000, latency_ms=1.0,
                  latency_p90_ms=1.5, peak_memory_bytes=8192, accuracy=None, batch_size=1, threads=1)
    return st.Metrics(**{**fields, **values})


# numbers chosen so that every ratio and difference is exact in binary floating point, except 6.0 / 2.4
BEFORE = _metrics(params=1_200_000, nonzero_params=1_200_000, size_bytes=3_000_000, flops=800_000_000,
                  macs=400_000_000, latency_ms=6.0, latency_p90_ms=9.0, peak_memory_bytes=4 * 2**20, accuracy=0.8125,
                  batch_size=1, threads=2)
AFTER = _metrics(params=1_200_000, nonzero_params=300_000, size_bytes=750_000, flops=200_000_000,
                 macs=100_000_000, latency_ms=2.4, latency_p90_ms=3.6, peak_memory_bytes=2**20, accuracy=0.796875,
                 batch_size=8, threads=4)


def test_ratios_are_before_over_after_and_accuracy_change_is_after_minus_before():
    c = st.compare(BEFORE, AFTER)
    assert isinstance(c, Comparison) and c.before is BEFORE and c.after is AFTER
    assert c.ratios == {
        "size_x": 3_000_000 / 750_000,
        "params_x": 1_200_000 / 300_000,
        "flops_x": 800_000_000 / 200_000_000,
        "speedup_x": 6.0 / 2.4,
        "memory_x": 4.0,
        "accuracy_change": 0.796875 - 0.8125,
    }
    assert c.ratios["size_x"] == 4.0 and c.ratios["speedup_x"] == pytest.approx(2.5)
    assert c.ratios["accuracy_change"] == -0.015625


def test_a_model_compared_with_itself_has_unit_ratios():
    c = st.compare(BEFORE, BEFORE)
    assert c.ratios == {"size_x": 1.0, "params_x": 1.0, "flops_x": 1.0, "speedup_x": 1.0, "memory_x": 1.0,
                        "accuracy_change": 0.0}


def test_rows_are_the_display_strings_of_every_metric():
    assert st.compare(BEFORE, AFTER).rows() == [
        ("saved size", "2.9 MiB", "732.4 KiB", "4.00x smaller"),
        ("parameters (non-zero)", "1.20M", "300.00k", "4.00x fewer"),
        ("FLOPs", "800.00M", "200.00M", "4.00x fewer"),
        # batch size and threads are those of the "after" record
        ("latency median (batch 8, 4 threads)", "6.000 ms", "2.400 ms", "2.50x faster"),
        ("latency p90", "9.000 ms", "3.600 ms", "2.50x faster"),
        ("peak memory", "4.0 MiB", "1.0 MiB", "4.00x less"),
        ("accuracy", "0.8125", "0.7969", "-1.56 points"),
    ]


def test_a_zero_after_value_has_no_ratio_and_no_accuracy_means_no_accuracy_row():
    before = _metrics(flops=2000, peak_memory_bytes=8192, latency_p90_ms=1.5)
    after = _metrics(flops=0, peak_memory_bytes=0, latency_p90_ms=0.0, accuracy=0.5)  # accuracy on one side only
    c = st.compare(before, after)
    assert c.ratios["flops_x"] is None and c.ratios["memory_x"] is None
    assert c.ratios["accuracy_change"] is None
    rows = {row[0]: row for row in c.rows()}
    assert rows["FLOPs"] == ("FLOPs", "2.00k", "0", "- fewer")
    assert rows["peak memory"] == ("peak memory", "8.0 KiB", "0 B", "- less")
    assert rows["latency p90"][3] == "- faster"
    assert "accuracy" not in rows and len(rows) == 6


def test_markdown_is_a_header_and_one_line_per_row():
    c = st.compare(BEFORE, AFTER)
    lines = c.to_markdown().split("\n")
    assert lines[:2] == ["| metric | before | after | change |", "|---|---|---|---|"]
    assert lines[2:] == [f"| {m} | {b} | {a} | {x} |" for m, b, a, x in c.rows()] + [""]  # ends with a newline
    assert "| peak memory | 4.0 MiB | 1.0 MiB | 4.00x less |" in lines


def test_to_dict_is_plain_json_and_rebuilds_both_records():
    c = st.compare(BEFORE, AFTER)
    d = json.loads(json.dumps(c.to_dict()))
    assert d == c.to_dict() and set(d) == {"before", "after", "ratios"}
    assert st.Metrics.from_dict(d["before"]) == BEFORE and st.Metrics.from_dict(d["after"]) == AFTER
    assert d["ratios"]["size_x"] == 4.0 and d["ratios"]["accuracy_change"] == -0.015625


def test_the_terminal_table_holds_every_cell_without_colour_codes():
    text = str(st.compare(BEFORE, AFTER))
    assert "slimtorch: before -> after" in text and "\x1b" not in text
    assert all(len(line) <= 100 for line in text.splitlines())
    for row in st.compare(BEFORE, AFTER).rows():
        line = next(line for line in text.splitlines() if row[0] in line)
        assert all(cell in line for cell in row)


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (3 * 2**20, "3.0 MiB"),
    (5 * 2**30, "5.0 GiB"), (2**40, "1024.0 GiB"), (-2048, "-2.0 KiB"),
])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize("n,text", [
    (0, "0"), (999, "999"), (1000, "1.00k"), (2_500_000, "2.50M"), (3e9, "3.00G"), (3e12, "3000.00G"),
    (-1500, "-1.50k"),
])
def test_human_count(n, text):
    assert human_count(n) == text


@pytest.mark.parametrize("fmt,n,text", [(human_bytes, 2**20 - 1, "1.0 MiB"), (human_count, 999_999, "1.00M")])
def test_a_value_that_rounds_up_to_the_next_unit_is_shown_in_it(fmt, n, text):
    assert fmt(n) == text
