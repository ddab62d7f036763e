"""The drift figures (mdrec.eval.drift) on hand-computed cases: PSI, the histograms' bins, calibration bins, the
flagging rules, and the reference's file format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mdrec.eval.drift import (
    DenseHistogram,
    DomainReference,
    SparseHistogram,
    Thresholds,
    calibration_bins,
    calibration_ratio,
    check_domain,
    psi,
    reference_arrays,
    reference_of,
)


def test_psi_by_hand() -> None:
    # shares 0.5/0.5 -> 0.8/0.2: (0.8 - 0.5) ln(0.8 / 0.5) + (0.2 - 0.5) ln(0.2 / 0.5)
    assert psi(np.array([50, 50]), np.array([80, 20])) == pytest.approx(0.3 * math.log(1.6) + 0.3 * math.log(2.5))
    # an empty reference bin counts as 1e-4: (0.5 - 1) ln(0.5 / 1) + (0.5 - 1e-4) ln(0.5 / 1e-4)
    by_hand = -0.5 * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi(np.array([10, 0]), np.array([5, 5])) == pytest.approx(by_hand)
    assert psi(np.array([3, 7]), np.array([30, 70])) == 0.0  # the same shares
    assert math.isnan(psi(np.array([3, 7]), np.array([0, 0])))


def test_sparse_bins_are_the_top_ids_and_other() -> None:
    h = SparseHistogram.of(np.array([5, 5, 5, 2, 2, 9, 9, 1]), top=2)  # 5 (3 rows), then 2 and 9 tie: 2
    assert h.ids.tolist() == [5, 2] and h.counts.tolist() == [3, 2, 3]
    assert h.count(np.array([2, 2, 7, 5, 0])).tolist() == [1, 2, 2]  # 5, 2, other (7 and the unknown id 0)
    # fresh ids: half 5, half new ids -> shares (3/8, 2/8, 3/8) against (1/2, 0, 1/2), the empty bin at 1e-4
    fresh = np.array([5, 5, 11, 12])
    p, q = np.array([3, 2, 3]) / 8, np.array([0.5, 1e-4, 0.5])
    assert psi(h.counts, h.count(fresh)) == pytest.approx(float(((q - p) * np.log(q / p)).sum()))


def test_dense_bins_are_reference_quantiles() -> None:
    h = DenseHistogram.of(np.arange(1.0, 9.0), bins=4)  # quantiles 25/50/75 % of 1..8: 2.75, 4.5, 6.25
    assert h.edges.tolist() == [2.75, 4.5, 6.25] and h.counts.tolist() == [2, 2, 2, 2]
    assert h.count(np.array([-5.0, 2.75, 4.4, 100.0])).tolist() == [1, 2, 0, 1]  # an edge belongs to the bin above
    assert DenseHistogram.of(np.array([1.0, 1.0, 1.0, 2.0]), bins=4).edges.tolist() == [1.0, 1.25]  # repeats merged


def test_calibration_bins_by_hand() -> None:
    prob = np.array([0.9, 0.1, 0.3, 0.2, 0.5])
    label = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    bins = calibration_bins(prob, label, 2)  # sorted 0.1, 0.2, 0.3 | 0.5, 0.9
    assert [(b.rows, b.predicted, b.observed) for b in bins] == [(3, 0.2, 1 / 3), (2, 0.7, 0.5)]
    assert calibration_ratio(prob, label) == pytest.approx(2.0 / 2.0)  # sum of predictions 2.0, 2 positives
    assert len(calibration_bins(prob[:1], label[:1], 10)) == 1 and calibration_bins(prob[:0], label[:0], 3) == []


def reference(rng: np.random.Generator, n: int = 4000) -> tuple[DomainReference, dict[str, np.ndarray]]:
    """A domain of a sparse and a dense field whose label follows the dense value, with a calibrated model on its
    test rows; and its training columns."""
    columns = {"item": rng.zipf(1.5, n).clip(max=50), "price": rng.standard_normal(n)}
    histograms = {"item": SparseHistogram.of(columns["item"]), "price": DenseHistogram.of(columns["price"])}
    prob = 1 / (1 + np.exp(-rng.standard_normal(n)))
    return DomainReference(n, histograms, prob, (rng.random(n) < prob).astype(np.float64)), columns


def test_flags_name_what_moved_and_nothing_else() -> None:
    rng = np.random.default_rng(0)
    ref, _ = reference(rng)
    same, _ = reference(rng)  # fresh rows from the same process
    fresh = {"item": rng.zipf(1.5, 4000).clip(max=50), "price": rng.standard_normal(4000)}
    check = check_domain("d0", ref, fresh, same.test_prob, same.test_label, Thresholds(), 10, 200, 0)
    assert not check.flagged and check.auc is not None and abs(check.auc.diff) < 0.03
    assert max(check.psi.values()) < 0.05 and check.psi_noise < 0.05
    # inputs: the dense field moved by one standard deviation
    moved = {**fresh, "price": fresh["price"] + 1.0}
    check = check_domain("d0", ref, moved, same.test_prob, same.test_label, Thresholds(), 10, 200, 0)
    assert check.psi["price"] > 0.2 > check.psi["item"] and check.reasons == [check.reasons[0]]
    assert check.reasons[0].startswith("inputs: PSI > 0.2 (price ")
    # quality: the model ranks the fresh rows at random
    noise = rng.random(4000)
    check = check_domain("d0", ref, fresh, noise, same.test_label, Thresholds(calibration=10), 10, 200, 0)
    assert [r.split(":")[0] for r in check.reasons] == ["quality"] and check.auc.high < -0.01
    # calibration: every prediction halved (the ranking, hence the AUC, unchanged)
    check = check_domain("d0", ref, fresh, same.test_prob / 2, same.test_label, Thresholds(), 10, 200, 0)
    assert [r.split(":")[0] for r in check.reasons] == ["calibration"]
    assert check.calibration.run == pytest.approx(1.0, abs=0.05) and check.calibration.fresh == pytest.approx(
        0.5, abs=0.05
    )
    # without fresh test rows: the inputs only, said
    check = check_domain("d0", ref, moved, np.zeros(0), np.zeros(0), Thresholds(), 10, 200, 0)
    assert check.auc is None and "no fresh test rows" in check.note and check.flagged


def test_the_reference_file_round_trips_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    ref, _ = reference(np.random.default_rng(1), 300)
    arrays = reference_arrays({"d0": ref, "d1": DomainReference(3, ref.histograms)})
    back = reference_of(arrays, tmp_path / "x.npz")
    assert list(back) == ["d0", "d1"] and back["d1"].test_prob is None and back["d1"].rows == 3
    assert np.array_equal(back["d0"].histograms["item"].ids, ref.histograms["item"].ids)
    assert np.array_equal(back["d0"].histograms["price"].edges, ref.histograms["price"].edges)
    assert np.allclose(back["d0"].test_prob, ref.test_prob, atol=1e-7)
    damaged = {**arrays, "0/1/counts": arrays["0/1/counts"][:-1]}
    with pytest.raises(ValueError, match=r"x.npz: the histogram of field 'price' of domain 'd0' is not keys"):
        reference_of(damaged, tmp_path / "x.npz")
    with pytest.raises(ValueError, match=r"entry '1/rows' is missing"):
        reference_of({k: v for k, v in arrays.items() if k != "1/rows"}, tmp_path / "x.npz")
