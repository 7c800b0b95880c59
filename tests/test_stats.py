"""The evaluator's statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from evaluators.stats import bin_index, calibration, mcnemar_exact_p, wilson_interval, z_for

SEED_BINS = [0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0]


def test_z_for_95_percent():
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)


def test_wilson_8_of_10():
    # p=0.8, z^2/n=0.384146: centre 0.716744, half-width 0.226576
    rate = wilson_interval(8, 10, 0.95)
    assert rate.value == 0.8
    assert rate.low == pytest.approx(0.490162, abs=1e-5)
    assert rate.high == pytest.approx(0.943318, abs=1e-5)


def test_wilson_at_the_edges_stays_inside_0_1():
    zero = wilson_interval(0, 10, 0.95)
    assert zero.low == 0.0
    assert zero.high == pytest.approx(0.384146 / 1.384146, abs=1e-5)
    full = wilson_interval(50, 50, 0.95)
    assert full.high == 1.0
    assert full.low == pytest.approx(1 - 3.841459 / 50 / (1 + 3.841459 / 50), abs=1e-5)


def test_wilson_narrows_with_more_data():
    small, large = wilson_interval(5, 10), wilson_interval(500, 1000)
    assert large.high - large.low < small.high - small.low


def test_wilson_refuses_an_empty_group():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (6, 0, 0.03125),
        (0, 6, 0.03125),
        (3, 3, 1.0),
        (0, 0, 1.0),
        (10, 2, 2 * (1 + 12 + 66) / 4096),
        (5, 1, 2 * (1 + 6) / 64),
    ],
)
def test_mcnemar_exact(b, c, p):
    assert mcnemar_exact_p(b, c) == pytest.approx(p, abs=1e-12)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 2)


def test_bin_edges_belong_to_the_upper_bin_and_one_to_the_last():
    assert bin_index(0.0, SEED_BINS) == 0
    assert bin_index(0.2, SEED_BINS) == 1
    assert bin_index(0.949, SEED_BINS) == 4
    assert bin_index(0.95, SEED_BINS) == 5
    assert bin_index(1.0, SEED_BINS) == 5
    with pytest.raises(ValueError):
        bin_index(1.01, SEED_BINS)


def test_ece_and_brier_by_hand():
    confidences = [0.1, 0.3, 0.35, 0.9, 0.97]
    correct = [False, True, False, True, True]
    cal = calibration(confidences, correct, SEED_BINS)
    assert cal is not None
    # bins: [0,.2): acc 0 conf .1 -> .1; [.2,.4): acc .5 conf .325 -> .175 (x2);
    # [.8,.95): acc 1 conf .9 -> .1; [.95,1]: acc 1 conf .97 -> .03
    assert cal.ece == pytest.approx((0.1 + 2 * 0.175 + 0.1 + 0.03) / 5, abs=1e-12)
    assert cal.brier == pytest.approx((0.01 + 0.49 + 0.1225 + 0.01 + 0.0009) / 5, abs=1e-12)
    assert [b.count for b in cal.bins] == [1, 2, 0, 0, 1, 1]
    assert cal.bins[1].accuracy == 0.5
    assert cal.bins[1].mean_confidence == pytest.approx(0.325)
    assert cal.bins[2].accuracy is None and cal.bins[2].mean_confidence is None


def test_perfect_calibration_has_zero_ece():
    cal = calibration([1.0, 1.0, 0.0], [True, True, False], SEED_BINS)
    assert cal is not None and cal.ece == 0.0 and cal.brier == 0.0


def test_calibration_of_nothing_is_absent_not_zero():
    assert calibration([], [], SEED_BINS) is None


def test_calibration_is_finite():
    cal = calibration([0.5] * 3, [True, False, True], SEED_BINS)
    assert cal is not None and math.isfinite(cal.ece) and math.isfinite(cal.brier)
