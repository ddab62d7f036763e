"""The synthetic generator: deterministic, imbalanced, relatedness controls cross-domain agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mdrec.data import synthetic
from mdrec.data.store import ColumnStore
from mdrec.data.synthetic import SyntheticSource


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = SyntheticSource(num_rows=5000, seed=3).generate()
    b = SyntheticSource(num_rows=5000, seed=3).generate()
    c = SyntheticSource(num_rows=5000, seed=4).generate()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["click"], c["click"])


def test_domains_are_imbalanced_and_labels_consistent() -> None:
    cols = SyntheticSource(num_rows=100_000, num_domains=4, domain_shares=[0.7, 0.2, 0.08, 0.02]).generate()
    share = np.bincount(cols["domain"]) / 100_000
    np.testing.assert_allclose(share, [0.7, 0.2, 0.08, 0.02], atol=0.01)
    assert np.all(cols["conversion"] <= cols["click"])  # a conversion needs a click
    assert np.all(cols["oracle_conversion"] <= cols["oracle_click"])
    # labels follow the oracle: the observed click rate matches the mean true probability per domain
    for d in range(4):
        m = cols["domain"] == d
        assert abs(cols["click"][m].mean() - cols["oracle_click"][m].mean()) < 4 * np.sqrt(0.25 / m.sum())


def _cross_domain_correlation(relatedness: float) -> float:
    src = SyntheticSource(num_rows=20_000, num_domains=2, relatedness=relatedness, seed=0)
    cols = src.generate()
    sparse = np.stack([cols[n] for n in src.field_names], axis=1)
    dense = np.stack([cols[f"dense_{i}"] for i in range(src.num_dense)], axis=1)
    rows = len(sparse)
    as_d0 = src.click_logits(sparse, dense, np.zeros(rows, dtype=np.int64))
    as_d1 = src.click_logits(sparse, dense, np.ones(rows, dtype=np.int64))
    return float(np.corrcoef(as_d0, as_d1)[0, 1])


def test_lower_relatedness_lower_cross_domain_correlation() -> None:
    corr = [_cross_domain_correlation(r) for r in (1.0, 0.9, 0.5, 0.0)]
    assert corr[0] == pytest.approx(1.0, abs=1e-9)
    assert corr[0] > corr[1] > corr[2] > corr[3]
    assert abs(corr[3]) < 0.2  # unrelated domains: nearly uncorrelated true logits


def test_per_domain_relatedness_and_bad_settings() -> None:
    src = SyntheticSource(num_rows=100, num_domains=3, relatedness=[1.0, 1.0, 0.0])
    assert src.generate()["click"].shape == (100,)
    with pytest.raises(ValueError, match="relatedness has 2 values for 3 domains"):
        SyntheticSource(num_rows=100, num_domains=3, relatedness=[1.0, 0.5])
    with pytest.raises(ValueError, match=r"relatedness 1.5 must be in \[0, 1\]"):
        SyntheticSource(relatedness=1.5)
    with pytest.raises(ValueError, match="domain_shares"):
        SyntheticSource(num_domains=2, domain_shares=[1.0, 0.0])
    with pytest.raises(ValueError, match="domain_shares"):
        SyntheticSource(num_domains=2, domain_shares=[])


def test_a_share_profile_stretches_to_any_number_of_domains() -> None:
    long_tail = [0.6, 0.3, 0.08, 0.02]  # the config's default
    np.testing.assert_array_equal(synthetic.stretched_shares(long_tail, 4), long_tail)  # K = 4: as listed
    # K = 3: the cumulative curve 0, .6, .9, .98, 1 at x = 0, 1/4, .., 1, read at 1/3 (0.7) and 2/3 (0.9 + 0.08 / 1.5)
    thirds = [0.7, 0.2 + 0.16 / 3, 0.02 + 0.08 / 3]
    np.testing.assert_allclose(synthetic.stretched_shares(long_tail, 3), thirds, rtol=1e-12)
    np.testing.assert_allclose(synthetic.stretched_shares([1.0], 5), [0.2] * 5, rtol=1e-12)  # one value: uniform
    src = SyntheticSource(num_rows=80_000, num_domains=8, domain_shares=long_tail)
    share = np.bincount(src.generate()["domain"], minlength=8) / 80_000
    np.testing.assert_allclose(share, [0.3, 0.3, 0.15, 0.15, 0.04, 0.04, 0.01, 0.01], atol=0.006)


def test_chunked_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data set of at most CHUNK_ROWS rows is one draw (what every existing data set was); a larger one is
    prepared chunk by chunk into a valid store with the same schema, counting every chunk's rows in the report."""
    src = SyntheticSource(num_rows=10_000, num_domains=3, seed=5)
    whole = src.generate()
    monkeypatch.setattr(synthetic, "CHUNK_ROWS", 10_000)  # chunk size >= rows: one chunk, the in-RAM draw
    assert all(np.array_equal(whole[k], v) for k, v in src.generate().items())
    monkeypatch.setattr(synthetic, "CHUNK_ROWS", 3_000)  # 4 chunks, the last one partial
    chunks = list(src.generate_chunks())
    assert [len(c["domain"]) for c in chunks] == [3_000, 3_000, 3_000, 1_000]
    assert not np.array_equal(chunks[0]["dense_0"][:1_000], chunks[3]["dense_0"])  # each chunk its own draws
    src.prepare(tmp_path / "s", tmp_path / "raw")
    store = ColumnStore(tmp_path / "s")  # validates every value
    assert store.schema == src.schema() and len(store) == 10_000
    assert np.array_equal(store.column("time"), np.arange(10_000))
    domain = np.concatenate([c["domain"] for c in chunks])
    assert np.array_equal(store.column("domain"), domain)
    counts = np.bincount(domain, minlength=3).tolist()
    assert store.report()["rows_per_domain"] == dict(zip(("d0", "d1", "d2"), counts, strict=True))
    chunked = src.generate()
    assert all(np.array_equal(store.column(k), v.astype(store.column(k).dtype)) for k, v in chunked.items())


def test_a_later_period_and_a_drifting_domain() -> None:
    base = SyntheticSource(num_rows=20_000, seed=1)
    later = SyntheticSource(num_rows=20_000, seed=1, period=1)
    moved = SyntheticSource(num_rows=20_000, seed=1, period=1, drift_domain="d1", drift=1.0)
    a, b, c = base.generate(), later.generate(), moved.generate()
    assert not np.array_equal(a["user_id"], b["user_id"])  # other rows ...
    sparse = np.stack([b[n] for n in later.field_names], axis=1)
    dense = np.stack([b[f"dense_{i}"] for i in range(4)], axis=1)
    assert np.array_equal(base.click_logits(sparse, dense, b["domain"]), later.click_logits(sparse, dense, b["domain"]))
    # ... of the same world; the drift moves d1 alone: its dense features' mean by 1, its click function
    d1 = c["domain"] == 1
    assert np.array_equal(c["user_id"], b["user_id"]) and np.array_equal(c["click"][~d1], b["click"][~d1])
    assert abs(c["dense_0"][d1].mean() - 1.0) < 0.05 and abs(c["dense_0"][~d1].mean()) < 0.05
    logits = moved.click_logits(sparse, dense, b["domain"])
    assert np.array_equal(logits[b["domain"] != 1], later.click_logits(sparse, dense, b["domain"])[b["domain"] != 1])
    # turned by 90 degrees: d1's clicks follow its dense features alone (other ids, the same logits)
    other_ids = np.maximum(sparse[::-1], 1)
    d1_rows = b["domain"] == 1
    assert np.allclose(moved.click_logits(other_ids, dense, b["domain"])[d1_rows], logits[d1_rows])
    half = SyntheticSource(num_rows=10, seed=1, drift_domain="d1", drift=0.5)
    assert not np.allclose(half.click_logits(other_ids, dense, b["domain"])[d1_rows], logits[d1_rows])
    with pytest.raises(ValueError, match="drift_domain 'd9' is not one of the domains"):
        SyntheticSource(num_rows=10, drift_domain="d9", drift=0.5)
    with pytest.raises(ValueError, match="needs the domain that drifts"):
        SyntheticSource(num_rows=10, drift=0.5)
