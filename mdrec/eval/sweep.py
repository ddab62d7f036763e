"""Sweep reports (``mdrec-report``): runs grouped by what varies between them, mean ± std tables per domain with
the best marked, and paired tests against a baseline group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mdrec.eval.summary import (
    Failure,
    Run,
    comparison_table,
    group_runs,
    lower_is_better,
    mean_and_std,
    metric_key,
    values_of,
)
from mdrec.rundir import RunDir

SEED = "seed"
# overrides that say how a run ran, not what it is: never a group of their own (nor are hydra.* and paths.*)
NOT_METHOD = (SEED, "ckpt_path")
# the config values a report states (when its runs record them), so that a small or short sweep cannot pass for a
# full one: the data, how long and on how much each run trained, what was trained
SETTINGS = (
    "data.source._target_",
    "data.source.name",
    "data.source.num_rows",
    "data.source.num_domains",
    "data.batch_size",
    "data.domain_fractions",
    "trainer.max_epochs",
    "trainer.fast_dev_run",
    "trainer.limit_train_batches",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "trainer.precision",
    "callbacks.early_stopping.patience",
    "stage._target_",
    "model.net._target_",
    "model.optimizer.lr",
)


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """The override keys whose value differs between runs (a missing override counts as ``""``), except those of
    ``NOT_METHOD``, ``hydra.*`` and ``paths.*``.

    Example:
        >>> from pathlib import Path
        >>> runs = [Run(Path("a"), {}, {"model": "mmoe", "seed": "0"}), Run(Path("b"), {}, {"seed": "1"})]
        >>> varying_keys(runs)
        ['model']
    """
    keys = sorted({k for r in runs for k in r.overrides})
    plumbing = lambda k: k in NOT_METHOD or k.startswith(("hydra.", "paths."))  # noqa: E731
    return [k for k in keys if not plumbing(k) and len({r.overrides.get(k, "") for r in runs}) > 1]


def labelled_groups(
    runs: Sequence[Run], by: Sequence[str], names: Mapping[str, str] | None = None, x: str | None = None
) -> dict[str, list[Run]]:
    """Runs grouped by the values of the override keys ``by`` (and of ``x``), in the order of their first run
    (each method's groups by the value of ``x``).

    A group is named ``key=value, ...`` (``default`` for the runs that set none of ``by``), renamed by ``names``
    when listed there, then followed by ``, x=value`` when ``x`` is given.

    Example:
        >>> from pathlib import Path
        >>> runs = [Run(Path("a"), {}, {"model": "star", "k": "2"}), Run(Path("b"), {}, {"k": "2"})]
        >>> list(labelled_groups(runs, ["model"], {"default": "DNN"}, x="k"))
        ['model=star, k=2', 'DNN, k=2']
    """
    keys = [*by, *([x] if x is not None else [])]
    first = {id(run): i for i, run in enumerate(runs)}
    keyed: dict[tuple[str, str], list[Run]] = {}
    for values, group in sorted(group_runs(runs, keys).items(), key=lambda item: first[id(item[1][0])]):
        method = ", ".join(f"{k}={v}" for k, v in zip(by, values, strict=False) if v) or "default"
        method = (names or {}).get(method, method)
        keyed.setdefault((method, values[-1] if x is not None else ""), []).extend(group)
    if x is None:
        return {method: group for (method, _), group in keyed.items()}
    rank = {method: i for i, (method, _) in reversed(list(enumerate(keyed)))}
    ordered = sorted(keyed.items(), key=lambda item: (rank[item[0][0]], _as_number(item[0][1])))
    return {f"{method}, {x}={value}": group for (method, value), group in ordered}


def _as_number(value: str) -> tuple[int, float | str]:
    """Sort key: numbers by value, before any other text."""
    try:
        return 0, float(value)
    except ValueError:
        return 1, value


def run_domains(runs: Sequence[Run], metric: str) -> list[str]:
    """The domains of the runs: those of every run's ``data_report.json`` in id order, merged in first-seen order
    (runs with different domain sets give the union); without reports, every ``<metric>/<name>`` key, sorted.

    Raises:
        ValueError: a ``data_report.json`` is not a JSON mapping (the error names it).
    """
    domains: dict[str, None] = {}
    for run in runs:
        run_dir = RunDir(run.path)
        if run_dir.exists(RunDir.DATA_REPORT):  # a malformed one is an error naming it (RunDir.read_json)
            domains.update(dict.fromkeys(run_dir.read_json(RunDir.DATA_REPORT).get("domains") or []))
    if domains:
        return list(domains)
    return sorted({k[len(metric) + 1 :] for r in runs for k in r.metrics if k.startswith(f"{metric}/")})


def metric_keys(metric: str, domains: Sequence[str]) -> list[str]:
    """``metric`` (overall) followed by ``metric/<domain>`` for every domain."""
    return [metric_key(metric, c) for c in ["", *domains]]


@dataclass(frozen=True)
class Paired:
    """A group minus the baseline, seed by seed: mean and sample std of the differences, pairs, p-value of the
    paired t-test (nan under 2 pairs or identical differences), pairs in which the group is better."""

    mean: float
    std: float
    n: int
    p: float
    better: int

    def __str__(self) -> str:
        p = "n/a" if np.isnan(self.p) else f"{self.p:.3f}"
        spread = f" ± {self.std:.4f}" if self.n > 1 else ""  # one pair has no spread
        return f"{self.mean:+.4f}{spread} (p {p}, {self.better}/{self.n})"


def by_seed(runs: Sequence[Run], key: str, group: str) -> dict[float, float]:
    """``{seed: value of key}`` over the runs that report ``key``; a seed twice in one group is an error."""
    out: dict[float, float] = {}
    for run in runs:
        if key not in run.metrics:
            continue
        seed = run.metrics.get(SEED, run.overrides.get(SEED))
        if seed is None:
            raise ValueError(f"run {run.path} records no seed; paired tests pair runs by seed")
        seed = float(seed)
        if seed in out:
            raise ValueError(
                f"group {group!r} holds two runs with seed {seed:g} ({run.path}); the pairing by seed is "
                "ambiguous: split the groups further with --by"
            )
        out[seed] = run.metrics[key]
    return out


def paired(runs: Sequence[Run], baseline: Sequence[Run], key: str, group: str, baseline_name: str) -> Paired | None:
    """The paired comparison of ``runs`` against ``baseline`` on metric ``key``; None without common seeds."""
    a, b = by_seed(runs, key, group), by_seed(baseline, key, baseline_name)
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        return None
    diff = np.array([a[s] - b[s] for s in seeds])
    sign = -1.0 if lower_is_better(key) else 1.0
    p = float("nan")
    if len(diff) > 1 and np.ptp(diff) > 0:
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return Paired(*mean_and_std(diff), len(diff), p, int((sign * diff > 0).sum()))


def paired_table(groups: dict[str, list[Run]], baseline: str, keys: Sequence[str]) -> str:
    """A markdown table: per group other than ``baseline``, per key, the paired difference to the baseline
    (:class:`Paired`).

    Example:
        >>> from pathlib import Path
        >>> runs = [Run(Path(f"{m}{s}"), {"auc": v, "seed": s}, {}) for m, s, v in
        ...         [("a", 0, 0.70), ("a", 1, 0.72), ("b", 0, 0.71), ("b", 1, 0.74)]]
        >>> print(paired_table({"a": runs[:2], "b": runs[2:]}, "a", ["auc"]))
        | group | auc |
        |---|---|
        | b | +0.0150 ± 0.0071 (p 0.205, 2/2) |
    """
    if baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not a group; groups: {list(groups)}")
    lines = ["| group | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, runs in groups.items():
        if name == baseline:
            continue
        cells = [paired(runs, groups[baseline], k, name, baseline) for k in keys]
        lines.append(f"| {name} | " + " | ".join("n/a" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def shown(value: object) -> str:
    """A config value as a report cell: ``null`` for None, lists as ``[a, b]``."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return str(value)


def settings_lines(runs: Sequence[Run]) -> list[str]:
    """The report's settings section: a table of the ``SETTINGS`` the runs record (each value, or every value when
    they differ), the test rows and epochs each run measured, and the other config keys whose values differ
    between runs (at most two levels deep; seeds and each run's own directories left out).

    Example:
        >>> from pathlib import Path
        >>> runs = [Run(Path(f"r{i}"), {"test/rows/a": 10, "train/epochs": e}, {},
        ...             {"data.batch_size": 512, "trainer.max_epochs": 20, "model.net.units": u, "seed": i})
        ...         for i, (e, u) in enumerate([(3, 8), (5, 16)])]
        >>> for line in settings_lines(runs):
        ...     print(line)
        ## Settings
        <BLANKLINE>
        From the runs' config.yaml and metrics.json.
        <BLANKLINE>
        | setting | value |
        |---|---|
        | data.batch_size | 512 |
        | trainer.max_epochs | 20 |
        | test rows | 10 |
        | epochs trained | 3 to 5 |
        <BLANKLINE>
        Other config values that differ between runs: model.net.
    """
    configs = [run.config for run in runs if run.config]
    lines = ["## Settings", "", "From the runs' config.yaml and metrics.json."]
    if len(configs) < len(runs):
        lines.append(f"{len(runs) - len(configs)} of the {len(runs)} runs record no config.yaml.")
    rows = []
    for key in SETTINGS:
        values = list(dict.fromkeys(shown(c.get(key)) for c in configs if key in c))
        if values:
            rows.append((key, " / ".join(values) if len(values) > 1 else values[0]))
    test_rows = [sum(v for k, v in r.metrics.items() if k.startswith("test/rows/")) for r in runs]
    if any(test_rows):
        rows.append(("test rows", " / ".join(dict.fromkeys(f"{n:g}" for n in test_rows))))
    epochs = [r.metrics["train/epochs"] for r in runs if "train/epochs" in r.metrics]
    if epochs:
        low, high = min(epochs), max(epochs)
        rows.append(("epochs trained", f"{low:g}" if low == high else f"{low:g} to {high:g}"))
    if rows:
        lines += ["", "| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    differing = [k for k in dict.fromkeys(k for c in configs for k in c) if k not in SETTINGS and _differs(configs, k)]
    if differing:
        prefixes = dict.fromkeys(".".join(k.split(".")[:2]) for k in differing)
        lines += ["", f"Other config values that differ between runs: {', '.join(prefixes)}."]
    return lines


def _differs(configs: Sequence[dict], key: str) -> bool:
    """Whether ``key`` takes more than one value across ``configs`` (missing counts as a value), seeds and a run's
    own directories (a value holding its ``paths.output_dir``) aside."""
    if key.split(".")[-1] == SEED or key.startswith(("paths.", "hydra.")):
        return False
    own = lambda c, v: isinstance(v, str) and bool(c.get("paths.output_dir")) and c["paths.output_dir"] in v  # noqa: E731
    values = {shown(c.get(key, "<unset>")) for c in configs if not own(c, c.get(key))}
    return len(values) > 1


def failure_lines(failures: Sequence[Failure]) -> list[str]:
    """A markdown list of the failed runs: directory, overrides, error."""
    return [
        f"- `{f.path}` ({' '.join(f'{k}={v}' for k, v in f.overrides.items()) or 'no overrides'}): {f.error}"
        for f in failures
    ]


def sweep_report(
    runs: Sequence[Run],
    failures: Sequence[Failure],
    metrics: Sequence[str],
    domains: Sequence[str],
    groups: dict[str, list[Run]],
    baseline: str | None = None,
    title: str = "Sweep report",
) -> str:
    """The markdown report: per metric a table (a row per group that reports the metric, overall and per-domain
    columns, mean ± std over the group's runs, best in bold), the paired tests against ``baseline`` (a group's
    name), and the failed runs."""
    lines = [f"# {title}", "", f"{len(runs)} finished runs, {len(failures)} failed, {len(groups)} groups."]
    lines.append(
        "Cells: mean ± sample std over the group's runs (seeds; a group of one run shows its value); best mean per "
        "column in bold."
    )
    for metric in metrics:
        keys = metric_keys(metric, domains)
        reporting = {(g,): r for g, r in groups.items() if any(values_of(r, k) for k in keys)}  # n/a rows left out
        table = comparison_table(reporting, ["group"], keys, mark_best=True)
        lines += ["", f"## {metric}", "", table]
    lines += ["", *settings_lines(runs)]
    if baseline is not None:
        lines += ["", f"## Paired against {baseline}", ""]
        lines.append(
            "Group minus baseline, seed by seed: mean ± std of the differences, paired t-test p-value, pairs in "
            "which the group is better."
        )
        for metric in metrics:
            lines += ["", paired_table(groups, baseline, metric_keys(metric, domains))]
    if failures:
        lines += ["", "## Failed runs", "", *failure_lines(failures)]
    return "\n".join(lines) + "\n"
