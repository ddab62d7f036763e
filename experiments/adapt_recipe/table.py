"""The adaptation-recipe table: per recipe (sweep directories over seeds), test AUC overall and per domain (mean ±
sample std over seeds), the paired difference to a reference recipe and to the end-to-end target, seed by seed (mean,
paired t-test p-value, seeds ahead), the trainable parameters (per domain and shared) and the fit time (all domains
together, and per domain). ``--zero-shot <name>`` adds that recipe's model before adapting (``zeroshot/test/auc``) as
a row of its own, ``<name>, before adapting``. ``--metric logloss`` tabulates the test log loss instead (seeds
ahead: lower). ``--domain-counts`` prints, instead of the per-domain tables, each recipe against the reference in one
line: overall, on how many domains the reference is ahead (mean over seeds), significantly ahead and significantly
behind (paired t-test p < 0.05), and the costs: the form for many domains. ``--best-of <name>=<recipe>;...`` adds
a row of the best of those recipes chosen per domain by its mean test figure (the strongest reference a set of
models offers); ``--best-of-val`` chooses each domain's recipe by its mean validation figure instead.

    python experiments/adapt_recipe/table.py --reference LoRA --target PLE <name>=<dir>[,<dir>...] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Literal

import numpy as np

from mdrec.eval.summary import Run, load_runs, lower_is_better, mean_std
from mdrec.eval.sweep import SEED, by_seed, paired


def runs_of(dirs: str) -> list[Run]:
    """The finished runs below the comma-separated ``dirs``."""
    return [run for d in dirs.split(",") for run in load_runs(d)]


def before_adapting(run: Run) -> Run:
    """``run``'s model before adapting: its ``zeroshot/test/...`` and ``zeroshot/val/...`` figures as the test and
    validation figures, nothing trained."""
    zero = {
        k.removeprefix("zeroshot/"): v
        for k, v in run.metrics.items()
        if k.startswith(("zeroshot/test/", "zeroshot/val/"))
    }
    costs = {"params/added_per_domain": 0.0, "params/trainable": 0.0, "time/fit_seconds": 0.0}
    seed = {SEED: run.metrics[SEED]} if SEED in run.metrics else {}
    return dataclasses.replace(run, metrics={**zero, **costs, **seed})


# the cost figures of a --best-of row: none, no single model fitted it
NO_COSTS = {"params/added_per_domain": math.nan, "params/trainable": math.nan, "time/fit_seconds": math.nan}


def best_per_key(
    recipes: dict[str, list[Run]], names: list[str], keys: list[str], split: Literal["test", "val"]
) -> list[Run]:
    """The best of the recipes ``names``, chosen key by key: one run per seed they all have, whose figure for each
    (test) key is that seed's figure of the recipe with the best mean over seeds of the same key on ``split`` (the
    highest, the lowest for a lower-is-better key). ``split="val"``: per domain the model a practitioner would pick
    on validation; ``"test"``: the strongest of several models, chosen knowing the test figures (a reference to beat,
    not a model anyone could deploy). Its runs have no costs (:data:`NO_COSTS`)."""
    flag = "--best-of" if split == "test" else "--best-of-val"
    sign = -1.0 if lower_is_better(keys[0]) else 1.0
    seeded = {name: by_seed(recipes[name], keys[0], name) for name in names}
    seeds = sorted(set.intersection(*(set(by) for by in seeded.values())))
    if not seeds:
        raise SystemExit(f"{flag} {';'.join(names)}: the recipes share no seed; name recipes run with the same seeds")
    metrics: dict[float, dict[str, float]] = {seed: {SEED: seed, **NO_COSTS} for seed in seeds}
    for key in keys:
        values = {name: by_seed(recipes[name], key, name) for name in names}
        chosen = f"{split}/{key.removeprefix('test/')}"
        on = {name: by_seed(recipes[name], chosen, name) for name in names}
        missing = [name for name in names if not set(seeds) <= set(values[name]) & set(on[name])]
        if missing:
            raise SystemExit(
                f"{flag}: the recipes {missing} lack {key} or {chosen} on some of the seeds {seeds}; "
                "leave them out of the row (a recipe that does not run every domain cannot be its best)"
            )
        best = max(names, key=lambda name: sign * np.mean([on[name][s] for s in seeds]))
        for seed in seeds:
            metrics[seed][key] = values[best][seed]
    return [Run(Path(f"best-of/{seed:g}"), metrics[seed], {}) for seed in seeds]


def difference(runs: list[Run], other: list[Run], key: str, name: str, other_name: str) -> str:
    """``mean diff (p, ahead/n)`` of ``runs - other`` over the seeds both have (:func:`mdrec.eval.sweep.paired`)."""
    c = paired(runs, other, key, name, other_name)
    if c is None:
        return ""
    return f"{c.mean:+.4f}" if np.isnan(c.p) else f"{c.mean:+.4f} (p {c.p:.3f}, {c.better}/{c.n})"


def costs(runs: list[Run], num_domains: int) -> str:
    """The cost cells of ``runs`` (means over seeds): trainable parameters per domain, shared trainable parameters,
    fit seconds, fit seconds per domain (``0 | 0 | |`` for a model before adapting, which fits nothing)."""
    ms = [run.metrics for run in runs]
    if all(math.isnan(m["time/fit_seconds"]) for m in ms):  # a --best-of row (NO_COSTS)
        return " | | | "
    per_domain = np.mean([m["params/added_per_domain"] for m in ms])
    shared = np.mean([m["params/trainable"] - m["params/added_per_domain"] * num_domains for m in ms])
    fit = np.mean([m["time/fit_seconds"] for m in ms])
    return f"{per_domain:,.0f} | {shared:,.0f} | {fit:.0f} | {fit / num_domains:.0f}" if fit > 0 else "0 | 0 | |"


COST_HEADS = "trainable per domain | shared trainable | fit s | fit s per domain"


def print_domain_counts(recipes: dict[str, list[Run]], reference: str, keys: list[str]) -> None:
    """Per recipe: the reference minus it overall, the domains (``keys[1:]``) on which the reference is ahead,
    significantly ahead and significantly behind, and the recipe's costs."""
    print(f"| recipe | seeds | overall | {reference} minus recipe | domains {reference} ahead | significantly ahead | "
          f"significantly behind | {COST_HEADS} |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ref = recipes[reference]
    sign = -1.0 if lower_is_better(keys[0]) else 1.0
    n = len(keys) - 1
    print(f"| {reference} | {len(ref)} | {mean_std([run.metrics[keys[0]] for run in ref])} | | | | | {costs(ref, n)} |")
    for name, runs in recipes.items():
        if name == reference:
            continue
        overall = mean_std([run.metrics[keys[0]] for run in runs])
        pairs = [paired(ref, runs, k, reference, name) for k in keys]
        domains = [c for c in pairs[1:] if c is not None]
        ahead = [sign * c.mean > 0 for c in domains]
        significant = [sign * c.mean > 0 for c in domains if c.p < 0.05]
        print(
            f"| {name} | {len(runs)} | {overall} | {difference(ref, runs, keys[0], reference, name)} | "
            f"{sum(ahead)}/{len(domains)} | {sum(significant)} | {len(significant) - sum(significant)} | "
            f"{costs(runs, n)} |"
        )


def named(arg: str, flag: str) -> tuple[str, str]:
    """``name=value`` of a command-line argument, split at the first ``=``."""
    name, sep, value = arg.partition("=")
    if not sep or not name or not value:
        raise SystemExit(f"{flag} {arg!r}: expected name=value (a recipe: name=dir[,dir...]; a best-of row: "
                         "name=recipe;recipe;...)")  # fmt: skip
    return name, value


def check_recipes(flag: str, names: list[str], recipes: dict[str, list[Run]]) -> None:
    """Exit naming ``flag`` and the recipes unless every one of ``names`` is a recipe."""
    unknown = [name for name in names if name not in recipes]
    if unknown:
        raise SystemExit(f"{flag}: no recipe named {unknown}; the recipes: {list(recipes)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipes", nargs="+", help="name=dir[,dir...]")
    parser.add_argument("--reference", required=True, help="the recipe the levers are compared with")
    parser.add_argument("--target", help="the end-to-end model to reach (the full tables pair every recipe with it)")
    parser.add_argument("--zero-shot", action="append", default=[], help="a recipe: its model before adapting as a row")
    parser.add_argument("--metric", choices=["auc", "logloss"], default="auc", help="the test metric tabulated")
    parser.add_argument("--domain-counts", action="store_true", help="one line per recipe instead of the tables")
    parser.add_argument(
        "--best-of",
        action="append",
        default=[],
        help="name=recipe;recipe;...: a row of the best of those recipes chosen per domain (and overall) on test",
    )
    parser.add_argument(
        "--best-of-val",
        action="append",
        default=[],
        help="name=recipe;recipe;...: the same, each domain's recipe chosen on its validation figure",
    )
    args = parser.parse_args()
    recipes = {name: runs_of(dirs) for name, dirs in (named(r, "recipe") for r in args.recipes)}
    check_recipes("--zero-shot", args.zero_shot, recipes)
    for name in args.zero_shot:
        recipes[f"{name}, before adapting"] = [before_adapting(run) for run in recipes[name]]
    first = next(iter(recipes.values()))[0].metrics
    domains = sorted(k.removeprefix("test/auc/") for k in first if k.startswith("test/auc/"))  # names may hold "/"
    keys = [f"test/{args.metric}", *(f"test/{args.metric}/{d}" for d in domains)]
    for flag, split, bests in (("--best-of", "test", args.best_of), ("--best-of-val", "val", args.best_of_val)):
        for best in bests:
            name, members = named(best, flag)
            check_recipes(f"{flag} {best!r}", members.split(";"), recipes)
            recipes[name] = best_per_key(recipes, members.split(";"), keys, split)
    check_recipes("--reference", [args.reference], recipes)
    if args.domain_counts:
        print_domain_counts(recipes, args.reference, keys)
        return
    if args.target is None:
        raise SystemExit("--target: the full tables pair every recipe with it; name it, or pass --domain-counts")
    check_recipes("--target", [args.target], recipes)
    head = "| recipe | seeds | overall | " + " | ".join(domains)
    print(f"{head} | {COST_HEADS} |")
    print("|---|---|" + "---|" * (len(keys) + 4))
    for name, runs in recipes.items():
        cells = [mean_std([run.metrics[k] for run in runs]) for k in keys]
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {costs(runs, len(domains))} |")
    for other in (args.reference, args.target):
        print(f"\nPaired by seed, recipe minus {other}: mean difference (p-value, seeds ahead / seeds)\n")
        print("| recipe | overall | " + " | ".join(domains) + " |")
        print("|---|" + "---|" * len(keys))
        for name, runs in recipes.items():
            if name != other:
                cells = (difference(runs, recipes[other], k, name, other) for k in keys)
                print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
