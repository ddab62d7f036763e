"""The seeded multi-domain generator with its oracle: mdrec's embedded default data set.

Each row has F categorical fields (Zipf-distributed ids, each id with a fixed latent vector) and N dense
features; stacked, they form x in R^P (P = F * latent_dim + N). Domain d scores x along its own direction

    w_d = sqrt(r_d) * u_0 + sqrt(1 - r_d) * u_d          (u_0, u_1..u_K orthonormal)

so two domains' directions have cosine sqrt(r_a * r_b): relatedness r = 1 makes all domains one task, r = 0 makes
them unrelated (the MMoE paper's synthetic construction extended to K domains; docs/datasets.md, Synthetic data).
With z = w_d . x (unit variance),

    logit_click = b_d + scale * (z + nonlinearity * mean_j sin(alpha_j * z + beta_j)),  alpha, beta ~ N(0, 1)
    logit_cvr   = c_d + scale * z'                        (z' along a second set of directions, same relatedness)

click ~ Bernoulli(sigmoid(logit_click)); conversion = click AND Bernoulli(sigmoid(logit_cvr)) (the CTCVR label).
The true probabilities are kept as oracle columns, so every evaluation can report the Bayes AUC per domain.

Drift over time (off by default): ``period`` t > 0 draws other rows of the same world; with ``drift_domain`` and
``drift`` = a in [0, 1], that domain's click direction turns by a x 90 degrees towards a random direction v of the dense
features (drawn from its own seed), ``z -> cos(a pi / 2) w_d . x + sin(a pi / 2) v . dense`` (concept drift: what the
model learned of the domain decays; at a = 1 its clicks follow the dense features alone), and its rows' dense
features are drawn with mean a instead of 0 (covariate drift: the inputs' distribution moves; its categorical ids
keep their distribution).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mdrec.data.schema import Schema, SparseField
from mdrec.data.store import StoreWriter

LABELS = ("click", "conversion")
ORACLE = {"click": "oracle_click", "conversion": "oracle_conversion"}
# Rows generated (and written) at a time. Chunk i draws from the generator seeded (seed, 1) for i = 0, else
# (seed, 1, i), so a data set of at most CHUNK_ROWS rows is one draw from (seed, 1).
# Not a dataclass field: the fields fingerprint the prepared directory. Changing it changes every larger data set.
CHUNK_ROWS = 1 << 21


@dataclass
class SyntheticSource:
    """K domains with controllable relatedness, imbalanced sizes, click and conversion labels.

    Args:
        num_rows: rows to generate.
        num_domains: K.
        relatedness: r in [0, 1], one for all domains or one per domain (pairwise cosine sqrt(r_a r_b)).
        domain_shares: a share profile over the domains (normalised): with K values, each domain's share; with
            another number of values, the profile stretched to K domains (``stretched_shares``); None: 1/(d+1).
        vocab_sizes: ids per categorical field (id 0 stays free for padding); the first field is the user.
        num_dense: N, standard-normal dense features.
        latent_dim: size of each categorical id's latent vector.
        zipf_exponent: popularity skew of the categorical ids.
        scale: signal strength of the click logit (higher: easier, higher oracle AUC).
        nonlinearity: weight of the sine terms that make the logit non-linear in z.
        num_sines: number of sine terms.
        ctr_range: base click rates of the domains are drawn uniformly from this range.
        cvr_rate: base conversion rate after a click.
        seed: every random choice follows from it.
        period: the draw of rows: 0 the data set's own, t > 0 another draw of the same world (fresh rows "later").
        drift_domain: the domain (its name, ``d<i>``) whose parameters drift; None: no drift.
        drift: a in [0, 1], how far ``drift_domain`` drifts (module docstring); 0 with a domain: fresh rows only.

    Example:
        >>> src = SyntheticSource(num_rows=10_000, num_domains=3, relatedness=0.5)
        >>> cols = src.generate()
        >>> sorted(np.bincount(cols["domain"]).tolist(), reverse=True)[0] > 10_000 / 3
        True
    """

    num_rows: int = 300_000
    num_domains: int = 4
    relatedness: float | list[float] = 0.7
    domain_shares: list[float] | None = None
    vocab_sizes: list[int] = field(default_factory=lambda: [2000, 500, 200, 100, 50, 20, 10, 5])
    num_dense: int = 4
    latent_dim: int = 4
    zipf_exponent: float = 1.1
    scale: float = 1.5
    nonlinearity: float = 1.0
    num_sines: int = 10
    ctr_range: tuple[float, float] = (0.1, 0.35)
    cvr_rate: float = 0.15
    seed: int = 0
    period: int = 0
    drift_domain: str | None = None
    drift: float = 0.0

    def __post_init__(self) -> None:
        if self.num_rows < 1 or self.num_domains < 1:
            raise ValueError(f"num_rows ({self.num_rows}) and num_domains ({self.num_domains}) must be positive")
        if np.ndim(self.relatedness) == 1 and len(self.relatedness) != self.num_domains:
            raise ValueError(f"relatedness has {len(self.relatedness)} values for {self.num_domains} domains")
        r = np.broadcast_to(np.asarray(self.relatedness, dtype=np.float64), (self.num_domains,))
        if ((r < 0) | (r > 1)).any():
            raise ValueError(f"relatedness {self.relatedness} must be in [0, 1], one value or one per domain")
        if self.domain_shares is not None and (not self.domain_shares or min(self.domain_shares) <= 0):
            raise ValueError(f"domain_shares {self.domain_shares} must be positive numbers (a list of at least one)")
        if not self.vocab_sizes or min(self.vocab_sizes) < 1:
            raise ValueError(f"vocab_sizes {self.vocab_sizes} must be a non-empty list of positive sizes")
        if self.period < 0 or not 0 <= self.drift <= 1:
            raise ValueError(f"period ({self.period}) must be >= 0 and drift ({self.drift}) in [0, 1]")
        names = [f"d{d}" for d in range(self.num_domains)]
        if self.drift_domain is not None and self.drift_domain not in names:
            raise ValueError(f"drift_domain {self.drift_domain!r} is not one of the domains {names}")
        if self.drift and self.drift_domain is None:
            raise ValueError(f"drift={self.drift} needs the domain that drifts: set drift_domain (e.g. d3)")
        self._r = r
        self._build_world()

    @property
    def dataset_id(self) -> str:
        return "synthetic"

    @property
    def field_names(self) -> list[str]:
        return ["user_id", *[f"cat_{i}" for i in range(1, len(self.vocab_sizes))]]

    def _build_world(self) -> None:
        """Draw everything that does not depend on rows: latent tables, directions, biases, sines."""
        rng = np.random.default_rng((self.seed, 0))
        k, m = self.num_domains, self.latent_dim
        p = len(self.vocab_sizes) * m + self.num_dense
        cols = 2 * (k + 1)  # click directions u_0..u_K, then conversion directions
        raw = rng.standard_normal((p, cols))
        # orthonormal directions when P allows, else independent random unit vectors (nearly orthogonal)
        u = np.linalg.qr(raw)[0] if p >= cols else raw / np.linalg.norm(raw, axis=0)
        # per field, project each id's latent vector onto every direction once: [V_f + 1, cols] (row 0 unused)
        self._tables = []
        for f, v in enumerate(self.vocab_sizes):
            latent = rng.standard_normal((v + 1, m))
            self._tables.append(latent @ u[f * m : (f + 1) * m])
        self._dense_proj = u[len(self.vocab_sizes) * m :]  # [N, cols]
        drifted = self.drift_domain is not None and self.drift > 0
        self._drift_id = int(self.drift_domain[1:]) if drifted else -1
        direction = np.random.default_rng((self.seed, 2)).standard_normal(self.num_dense)
        self._drift_dense = direction / max(np.linalg.norm(direction), 1e-12)  # [N] v, a unit direction
        self._alpha = rng.standard_normal(self.num_sines)
        self._beta = rng.standard_normal(self.num_sines)
        lo, hi = self.ctr_range
        self._click_bias = _logit(rng.uniform(lo, hi, k))
        self._cvr_bias = _logit(np.full(k, self.cvr_rate))
        shares = 1.0 / np.arange(1, k + 1) if self.domain_shares is None else stretched_shares(self.domain_shares, k)
        self._shares = shares / shares.sum()
        self._cdfs = [np.cumsum(w := np.arange(1, v + 1) ** -self.zipf_exponent) / w.sum() for v in self.vocab_sizes]

    def _projection(self, sparse: np.ndarray, dense: np.ndarray, domain: np.ndarray, offset: int) -> np.ndarray:
        """z = w_d . x for each row along the direction set starting at column ``offset`` (0 click, K+1 cvr)."""
        shared = dense @ self._dense_proj[:, offset]
        own = np.einsum("bn,bn->b", dense, self._dense_proj[:, offset + 1 + domain].T)
        for f, table in enumerate(self._tables):
            shared += table[sparse[:, f], offset]
            own += table[sparse[:, f], offset + 1 + domain]
        r = self._r[domain]
        z = np.sqrt(r) * shared + np.sqrt(1 - r) * own
        if offset == 0 and self._drift_id >= 0:  # the drifted domain's click direction turns towards v
            rows = domain == self._drift_id
            angle = self.drift * np.pi / 2
            z[rows] = np.cos(angle) * z[rows] + np.sin(angle) * (dense[rows] @ self._drift_dense)
        return z

    def click_logits(self, sparse: np.ndarray, dense: np.ndarray, domain: np.ndarray) -> np.ndarray:
        """True click logit of rows ``sparse [B, F]`` (ids 1..V), ``dense [B, N]`` scored as domain ``domain [B]``."""
        z = self._projection(sparse, dense, domain, 0)
        phases = np.multiply.outer(z, self._alpha)  # [B, num_sines], then in place: one such array at a time
        phases += self._beta
        wiggle = np.sin(phases, out=phases).mean(axis=1)
        return self._click_bias[domain] + self.scale * (z + self.nonlinearity * wiggle)

    def cvr_logits(self, sparse: np.ndarray, dense: np.ndarray, domain: np.ndarray) -> np.ndarray:
        """True conversion-after-click logit, same inputs as ``click_logits``."""
        return self._cvr_bias[domain] + self.scale * self._projection(sparse, dense, domain, self.num_domains + 1)

    def generate(self) -> dict[str, np.ndarray]:
        """All columns of the data set (features, domain, labels, oracle probabilities, time), in RAM at once."""
        chunks = list(self.generate_chunks())
        if len(chunks) == 1:
            return chunks[0]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}

    def generate_chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """The columns of ``CHUNK_ROWS`` rows at a time, in row order (``prepare`` holds one chunk at a time)."""
        for i, start in enumerate(range(0, self.num_rows, CHUNK_ROWS)):
            key = (self.seed, 1) if i == 0 else (self.seed, 1, i)
            rng = np.random.default_rng(key if self.period == 0 else (self.seed, 1, i, self.period))
            yield self._rows(rng, start, min(CHUNK_ROWS, self.num_rows - start))

    def _rows(self, rng: np.random.Generator, start: int, n: int) -> dict[str, np.ndarray]:
        """The columns of rows ``start .. start + n - 1``, every draw from ``rng``."""
        domain = rng.choice(self.num_domains, size=n, p=self._shares).astype(np.int64)
        sparse = np.empty((n, len(self._cdfs)), dtype=np.int64)  # filled in place: one [n, F] array at a time
        for f, cdf in enumerate(self._cdfs):
            sparse[:, f] = np.searchsorted(cdf, rng.random(n)) + 1
        np.minimum(sparse, np.asarray(self.vocab_sizes), out=sparse)  # guard the float edge of the last bucket
        dense = rng.standard_normal((n, self.num_dense))
        if self._drift_id >= 0:
            dense[domain == self._drift_id] += self.drift
        p_click = _sigmoid(self.click_logits(sparse, dense, domain))
        p_cvr = _sigmoid(self.cvr_logits(sparse, dense, domain))
        click = rng.random(n) < p_click
        conversion = click & (rng.random(n) < p_cvr)
        columns: dict[str, np.ndarray] = {name: sparse[:, f] for f, name in enumerate(self.field_names)}
        columns.update({f"dense_{i}": dense[:, i] for i in range(self.num_dense)})
        columns.update(
            domain=domain,
            click=click.astype(np.float32),
            conversion=conversion.astype(np.float32),
            oracle_click=p_click.astype(np.float32),
            oracle_conversion=(p_click * p_cvr).astype(np.float32),
            time=np.arange(start, start + n, dtype=np.int64),
        )
        return columns

    def schema(self) -> Schema:
        return Schema(
            dataset_id=self.dataset_id,
            sparse=tuple(SparseField(name, v + 1) for name, v in zip(self.field_names, self.vocab_sizes, strict=True)),
            dense=tuple(f"dense_{i}" for i in range(self.num_dense)),
            domain_field="domain",
            domains=tuple(f"d{d}" for d in range(self.num_domains)),
            labels=LABELS,
            user_field="user_id",
            time_column="time",
            oracle_columns=dict(ORACLE),
        )

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Generate and write the store chunk by chunk (nothing to download: ``raw_dir`` is unused)."""
        schema = self.schema()
        counts = np.zeros(self.num_domains, dtype=np.int64)
        with StoreWriter(directory, schema, self.num_rows) as writer:
            for chunk in self.generate_chunks():
                counts += np.bincount(chunk["domain"], minlength=self.num_domains)
                writer.write(chunk)
                del chunk  # not held while the next one is drawn
            report = {
                "rows": self.num_rows,
                "rows_per_domain": dict(zip(schema.domains, counts.tolist(), strict=True)),
                "relatedness": self._r.tolist(),
            }
            writer.commit(report=report)


def stretched_shares(profile: list[float], k: int) -> np.ndarray:
    """Row shares of ``k`` domains (unnormalised) from a share ``profile`` of any length.

    With ``k`` values the profile is returned as it is. Otherwise its normalised cumulative curve, piecewise linear
    over [0, 1] with the i-th value spread evenly over [i / n, (i + 1) / n], is cut into ``k`` equal slices: domain d
    gets the curve's rise over [d / k, (d + 1) / k], so the profile's shape (the head's share, the tail's) is kept.

    Example:
        >>> stretched_shares([0.6, 0.3, 0.08, 0.02], 8).round(3).tolist()
        [0.3, 0.3, 0.15, 0.15, 0.04, 0.04, 0.01, 0.01]
        >>> stretched_shares([0.6, 0.3, 0.08, 0.02], 2).round(3).tolist()
        [0.9, 0.1]
    """
    shares = np.asarray(profile, dtype=np.float64)
    if len(shares) == k:
        return shares
    curve = np.concatenate([[0.0], np.cumsum(shares) / shares.sum()])
    return np.diff(np.interp(np.linspace(0, 1, k + 1), np.linspace(0, 1, len(shares) + 1), curve))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))
