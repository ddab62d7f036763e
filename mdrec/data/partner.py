"""CSV files for the onboarding walk-through (README, Onboarding a new partner), drawn from the synthetic generator.

One synthetic world of five domains (``mdrec.data.synthetic``: relatedness 0.7 or one per domain, the default's
share profile for d0-d3 or ``source_shares``, and ``new_share`` for d4) is written as two data sets, each with its own
train/val/test files (80/10/10, random):

- ``<out>/source/``: the rows of d0-d3, the data a backbone is pre-trained and adapted on (``data=partner_source``);
- ``<out>/new/``: the rows of d4, a new partner the adapted model has never seen (``data=partner``), with the codes of
  the fields ``renamed`` replaced by the partner's own (``P0001``, ...: a random relabelling, so none matches a
  source value), and per renamed field a mapping file ``<field>_mapping.csv`` (``target_value,source_value``) of
  the partner's codes onto the source's values (those the source's training rows hold).

Fresh files of the same world, later (``--period 1``; the drift check of the walk-through): other rows, the same
partner codes and mapping files, and with ``--drift-domain d4 --drift 1`` the partner's domain drifted
(``mdrec.data.synthetic``: its click function turns, its dense features move). The ``partner_fresh`` data config reads
``data/partner_fresh/new``.

Command line: ``python -m mdrec.data.partner [out] [--rows N] [--seed S] [--period T] [--drift-domain D --drift A]
[--relatedness R[,R...]] [--source-shares S0,S1,S2,S3] [--new-share S]``
(default ``data/partner``: where the ``partner_source`` and ``partner`` data configs look with the default
``paths.data_dir``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from mdrec.data.alignment import MAPPING_COLUMNS
from mdrec.data.synthetic import SyntheticSource

SOURCE_DOMAINS = 4
SOURCE_SHARES = (0.6, 0.3, 0.08, 0.02)
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def partner_code(ids: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """The partner's code of each source id: ``P`` and the id's place in ``permutation``, 4 digits."""
    return np.char.add("P", np.char.zfill(permutation[ids].astype(str), 4))


def write_partner_files(
    out: str | Path,
    num_rows: int = 300_000,
    new_share: float = 0.05,
    relatedness: float | Sequence[float] = 0.7,
    source_shares: Sequence[float] = SOURCE_SHARES,
    renamed: Sequence[str] = ("cat_1", "cat_2"),
    seed: int = 0,
    period: int = 0,
    drift_domain: str | None = None,
    drift: float = 0.0,
) -> dict[str, Path]:
    """Write the source and new-partner files (module docstring) under ``out``; return the directories and
    mapping files by name (``source``, ``new``, ``<field>_mapping``). ``period``, ``drift_domain``, ``drift``: the
    synthetic generator's (fresh rows of the same world, one domain drifted); ``relatedness`` (one value or five) and
    ``source_shares`` (d0-d3's, with ``new_share`` normalised) the world's."""
    if len(source_shares) != SOURCE_DOMAINS:
        raise ValueError(
            f"source_shares {list(source_shares)} must give {SOURCE_DOMAINS} shares, one per source domain"
        )
    source = SyntheticSource(
        num_rows=num_rows,
        num_domains=SOURCE_DOMAINS + 1,
        domain_shares=[*source_shares, new_share],
        relatedness=relatedness if isinstance(relatedness, float | int) else list(relatedness),
        seed=seed,
        period=period,
        drift_domain=drift_domain,
        drift=drift,
    )
    unknown = sorted(set(renamed) - set(source.field_names))
    if unknown:
        raise ValueError(f"renamed fields {unknown} are not fields of the generator: {source.field_names}")
    columns = source.generate()
    rng = np.random.default_rng((seed, 11))
    split = rng.choice(3, size=num_rows, p=SPLIT_FRACTIONS)
    domain = columns["domain"]
    table = {name: columns[name] for name in source.field_names}
    table.update({f"dense_{i}": columns[f"dense_{i}"] for i in range(source.num_dense)})
    table["domain"] = np.char.add("d", domain.astype(str))
    table["click"] = columns["click"].astype(np.int8)
    table["conversion"] = columns["conversion"].astype(np.int8)
    out = Path(out)
    written: dict[str, Path] = {}
    is_new = domain == SOURCE_DOMAINS
    permutations = {f: rng.permutation(source.vocab_sizes[source.field_names.index(f)] + 1) for f in renamed}
    for part, rows in (("source", ~is_new), ("new", is_new)):
        directory = out / part
        directory.mkdir(parents=True, exist_ok=True)
        values = {name: column[rows] for name, column in table.items()}
        if part == "new":
            values.update({f: partner_code(values[f], permutations[f]) for f in renamed})
        for code, name in enumerate(("train", "val", "test")):
            chosen = split[rows] == code
            pacsv.write_csv(pa.table({k: v[chosen] for k, v in values.items()}), directory / f"{name}.csv")
        written[part] = directory
    for f in renamed:
        ids = np.unique(table[f][~is_new & (split == 0)])  # the values the source's training rows hold
        mapping = pa.table(
            dict(zip(MAPPING_COLUMNS, [partner_code(ids, permutations[f]), ids.astype(str)], strict=True))
        )
        path = out / "new" / f"{f}_mapping.csv"
        pacsv.write_csv(mapping, path)
        written[f"{f}_mapping"] = path
    return written


def floats(text: str) -> list[float]:
    """A comma-separated list of numbers."""
    return [float(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mdrec.data.partner", description=__doc__)
    parser.add_argument("out", nargs="?", type=Path, default=Path("data/partner"), help="default: data/partner")
    parser.add_argument("--rows", type=int, default=300_000, help="rows of all five domains (default 300000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--period", type=int, default=0, help="0: the data set; t > 0: fresh rows of the same world")
    parser.add_argument("--drift-domain", default=None, help="the domain that drifts (d0 ... d4)")
    parser.add_argument("--drift", type=float, default=0.0, help="how far it drifts, in [0, 1]")
    parser.add_argument(
        "--relatedness", type=floats, default=[0.7], help="one value, or five (d0-d4), e.g. 0.9,0.5,..."
    )
    parser.add_argument("--source-shares", type=floats, default=list(SOURCE_SHARES), help="d0-d3's shares")
    parser.add_argument("--new-share", type=float, default=0.05, help="d4's share (default 0.05)")
    args = parser.parse_args(argv)
    written = write_partner_files(
        args.out,
        args.rows,
        new_share=args.new_share,
        relatedness=args.relatedness[0] if len(args.relatedness) == 1 else args.relatedness,
        source_shares=args.source_shares,
        seed=args.seed,
        period=args.period,
        drift_domain=args.drift_domain,
        drift=args.drift,
    )
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
