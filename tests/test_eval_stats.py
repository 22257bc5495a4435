"""Confidence intervals against hand-computed / textbook values."""

import math

import pytest

from shieldkit.evaluation.stats import accuracy_summary, clopper_pearson, wilson


def test_clopper_pearson_edge_cases_closed_form():
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    lo, hi = clopper_pearson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-9)
    lo, hi = clopper_pearson(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 20), rel=1e-9)


def test_clopper_pearson_textbook_value():
    # 5/10 successes: exact 95% interval (0.1871, 0.8129)
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(0.18709, abs=1e-4) and hi == pytest.approx(0.81291, abs=1e-4)


def test_wilson_hand_computed():
    k, n, z = 30, 200, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(k, n) == pytest.approx((centre - half, centre + half), rel=1e-9)
    lo, hi = wilson(0, 50)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0 < hi < 0.08


def test_cp_contains_wilson_is_shorter_midrange():
    lo_c, hi_c = clopper_pearson(40, 100)
    lo_w, hi_w = wilson(40, 100)
    assert lo_c < 0.4 < hi_c and hi_w - lo_w < hi_c - lo_c


@pytest.mark.parametrize("k,n", [(-1, 10), (11, 10), (0, 0)])
def test_bad_counts_raise(k, n):
    with pytest.raises(ValueError):
        clopper_pearson(k, n)


def test_summary_record():
    s = accuracy_summary(3, 4, method="wilson")
    assert s["acc"] == 0.75 and s["n"] == 4 and s["ci_method"] == "wilson" and len(s["ci"]) == 2
    with pytest.raises(ValueError, match="unknown CI method"):
        accuracy_summary(1, 2, method="bogus")
