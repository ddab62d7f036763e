"""README.md's commands, every one: each command of each ```bash block runs (in a fast mode) or is exempt for a
stated reason, so a README command that stops working fails CI.

What runs (``plan``: the fast test checks it, the slow one runs it in README order from one scratch directory):

- A line is split at ``&&``; the parts in EXEMPT (setting up the environment, and the test run itself, which CI
  runs as written in .ci/run) are not run, each for its reason. Other shell syntax (pipes, redirections) fails.
- Training (``mdrec-train ...``, or ``[.venv/bin/]python -m mdrec.train ...``, run as ``sys.executable -m``) gets
  the fast settings the command does not set itself appended (``fast``): ``debug=fdr`` (one batch of everything),
  FAST_ROWS synthetic rows, 2 Optuna trials, and a ``hydra.run.dir`` (``hydra.sweep.dir`` for a multirun) of its
  own under the scratch directory. Its data set (``data=``) is synthetic or has a fixture in FIXTURES (MovieLens-1M: a
  generated zip in GroupLens' layout, accepted under its own checksum); any other fails the test.
- pyproject's other console scripts (mdrec-report, mdrec-gate, ...) and ``python -m mdrec.<module>`` (a tool of
  mdrec's, e.g. the example files of mdrec.data.sources.tabular) run as written; a non-zero exit passes only where
  OUTCOMES documents it (the gate's verdict).
- A data set in WRITTEN (``data=tabular``, ``data=partner``, ...) trains on files an earlier README command writes
  (``python -m <the module WRITTEN names>``): its paths are relative to the scratch directory every command runs
  from.
- A placeholder ``<...>`` is replaced by the run directory of the README command PLACEHOLDERS names for it, which
  must come earlier in the README. An unknown placeholder, program or data set fails the test: a new README command
  is either run here or exempt with its reason.

Console scripts come from the environment under test (``sys.executable``'s directory, first on PATH) and import the
repository under test (PYTHONPATH).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
TRAIN = "mdrec-train"
PYTHONS = ("python", "python3", ".venv/bin/python", ".venv/bin/python3")

# the set-up lines' parts that CI (.ci/run) runs exactly as the README writes them
CI_PARTS = ("python3 -m venv .venv", '.venv/bin/pip install torch==2.13.0 -e ".[dev]"', ".venv/bin/pytest")
EXEMPT: dict[str, str] = {
    **{part: "CI runs this very command (.ci/run)" for part in CI_PARTS},
    ".venv/bin/pip install torch==2.13.0 -e .": "the install CI makes, without the [dev] extra; a non-editable "
    "install trains in tests/train/test_cli.py::test_a_non_editable_install_trains_from_another_directory",
}
# placeholder -> the README command whose run directory replaces it
PLACEHOLDERS: dict[str, str] = {
    "<adapt run dir>": "mdrec-train stage=adapt",
    "<scratch run dir>": "mdrec-train",  # the default data and split: the adapt run's test rows
}
# program -> (exit code, text its stdout then holds): a documented verdict, not a failure
OUTCOMES: dict[str, tuple[int, str]] = {"mdrec-gate": (1, "Flagged (do not promote):")}
FAST_ROWS = 20_000  # synthetic rows where a command sets none (the gate judges d3 on about 40 test rows)
INFO_FLAGS = {"--version", "--help", "-h", "--hydra-help"}  # a training command with one of these trains nothing
SHELL = {"|", "||", ";", "&", ">", ">>", "<", "2>", "2>&1"}
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")


@dataclass(frozen=True)
class Step:
    """One README command: ``text`` as written (comment removed), ``program`` (a console script's name, or
    ``python``) and ``args`` (placeholders still in); ``module``: written as ``python -m <module>``, run so."""

    text: str
    program: str
    args: tuple[str, ...]
    module: str | None = None


def bash_lines(markdown: str) -> list[str]:
    """The command lines of every ```bash block, continuation lines joined, comments and blank lines removed."""
    blocks = re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.M | re.S)
    lines = re.sub(r"\s*\\\n\s*", " ", "\n".join(blocks)).splitlines()
    return [code for line in lines if (code := re.sub(r"(^|\s)#.*$", "", line).strip())]


def parse(part: str) -> Step:
    """``part`` (a command, no ``&&``) as a step; a placeholder stays one argument."""
    protected = PLACEHOLDER.sub(lambda m: m[0].replace(" ", "\0"), part)
    argv = [a.replace("\0", " ") for a in shlex.split(protected)]
    assert not SHELL & set(argv), f"README command {part!r}: shell syntax the README test does not run"
    argv[0] = argv[0].removeprefix(".venv/bin/") if argv[0].startswith(".venv/bin/mdrec-") else argv[0]
    if argv[0] in PYTHONS and argv[1:2] == ["-m"] and argv[2].split(".")[0] == "mdrec":
        return Step(part, TRAIN if argv[2] == "mdrec.train" else "python", tuple(argv[3:]), module=argv[2])
    assert argv[0] in SCRIPTS, (
        f"README command {part!r}: {argv[0]!r} is neither a console script of pyproject.toml nor `python -m "
        "mdrec.<module>`: teach tests/test_readme.py to run it, or add it to EXEMPT with the reason"
    )
    return Step(part, argv[0], tuple(argv[1:]))


def plan(markdown: str) -> tuple[list[Step], dict[str, str]]:
    """The steps to run, in README order, and the exempt commands with their reasons; fails on anything unknown."""
    steps: list[Step] = []
    exempt: dict[str, str] = {}
    for line in bash_lines(markdown):
        for part in (p.strip() for p in line.split("&&")):
            if part in EXEMPT:
                exempt[part] = EXEMPT[part]
                continue
            step = parse(part)
            for placeholder in PLACEHOLDER.findall(part):
                producer = PLACEHOLDERS.get(placeholder)
                assert producer is not None, (
                    f"README command {part!r}: placeholder {placeholder} is not in tests/test_readme.py "
                    f"PLACEHOLDERS (known: {sorted(PLACEHOLDERS)}): name the README command that produces it"
                )
                assert producer in [s.text for s in steps], (
                    f"README command {part!r}: {placeholder} is the run directory of `{producer}`, which no earlier "
                    "README command runs"
                )
            if step.program == TRAIN and (name := dataset(step.args)) in WRITTEN:
                assert WRITTEN[name] in [s.module for s in steps], (
                    f"README command {part!r}: data={name} reads the files `python -m {WRITTEN[name]}` writes, which "
                    "no earlier README command runs"
                )
            steps.append(step)
    return steps, exempt


def keys(args: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The Hydra overrides among ``args`` as key -> value (``+``/``~`` prefixes dropped)."""
    return {a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[1] for a in args if "=" in a and not a.startswith("-")}


def dataset(args: tuple[str, ...] | list[str]) -> str:
    name = keys(args).get("data", "synthetic")
    assert name == "synthetic" or name in FIXTURES or name in WRITTEN, (
        f"README command `mdrec-train {' '.join(args)}`: data={name} has no fixture in tests/test_readme.py "
        "FIXTURES (the test has no network): write one"
    )
    return name


def fast(args: list[str], out: Path) -> tuple[list[str], Path | None]:
    """A training command's arguments in the fast mode, and the run (or sweep) directory it will write."""
    if INFO_FLAGS & set(args):
        return args, None
    given = keys(args)
    extra = [] if "debug" in given else ["debug=fdr"]
    if dataset(args) == "synthetic" and "data.source.num_rows" not in given:
        extra.append(f"data.source.num_rows={FAST_ROWS}")
    if "hparams_search" in given and "hydra.sweeper.n_trials" not in given:
        extra.append("hydra.sweeper.n_trials=2")
    multirun = bool({"-m", "--multirun"} & set(args)) or "hparams_search" in given
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if key not in given:
        extra.append(f"{key}={out}")
    return [*args, *extra], Path(given.get(key, out))


# ---- data fixtures: data set name -> (program and leading arguments that train on it) -----------------------------

ML1M_LAUNCH = """
import dataclasses, sys
from mdrec.data.sources import movielens
release = movielens.RELEASES["ml-1m"]  # the fixture's checksum; it has none of the release's domain sizes
movielens.RELEASES["ml-1m"] = dataclasses.replace(release, md5=sys.argv.pop(1), domain_rows={})
sys.argv[0] = "mdrec-train"
from mdrec.train.cli import main
main()
"""


def movielens_1m(work: Path) -> list[str]:
    """A 3,000-rating ML-1M zip in GroupLens' layout (60 users of every age code, 40 movies) in ``work``'s raw data
    folder, and a ``mdrec-train`` (pyproject's entry point) that accepts its checksum."""
    rng = np.random.default_rng(0)
    n, ages = 3000, (1, 18, 25, 35, 45, 50, 56)
    users = [f"{u}::{'FM'[u % 2]}::{ages[u % 7]}::{u % 21}::{10000 + u}" for u in range(1, 61)]
    movies = [f"{m}::Movie {m} (1990)::{('Comedy', 'Drama', 'Action|Sci-Fi')[m % 3]}" for m in range(1, 41)]
    columns = rng.integers(1, 61, n), rng.integers(1, 41, n), rng.integers(1, 6, n), rng.integers(9e8, 1e9, n)
    ratings = ["::".join(map(str, row)) for row in zip(*columns, strict=True)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, rows in (("users", users), ("movies", movies), ("ratings", ratings)):
            archive.writestr(f"ml-1m/{name}.dat", "".join(r + "\n" for r in rows).encode("latin-1"))
    (work / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (work / "data" / "raw" / "ml-1m.zip").write_bytes(buffer.getvalue())
    assert SCRIPTS[TRAIN] == "mdrec.train.cli:main", "ML1M_LAUNCH calls mdrec.train.cli:main: update it"
    return [sys.executable, "-c", ML1M_LAUNCH, hashlib.md5(buffer.getvalue()).hexdigest()]


FIXTURES = {"ml1m": movielens_1m}
# data set -> the mdrec module whose `python -m` README command (earlier in the README) writes its files
WRITTEN = {
    "tabular": "mdrec.data.sources.tabular",
    "partner_source": "mdrec.data.partner",
    "partner": "mdrec.data.partner",
}


# ---- the tests ---------------------------------------------------------------------------------------------------


def test_every_readme_command_is_run_or_exempt() -> None:
    steps, exempt = plan((REPO / "README.md").read_text())
    assert steps and set(exempt) == set(EXEMPT), f"exemptions no README command needs: {set(EXEMPT) - set(exempt)}"
    ci = (REPO / ".ci" / "run").read_text()
    assert [p for p in CI_PARTS if p not in ci] == [], "an exemption says CI runs a command .ci/run does not run"
    assert set(PLACEHOLDERS.values()) <= {s.text for s in steps}, "a placeholder's producer left the README"


def test_the_plan_refuses_what_it_cannot_run() -> None:
    for markdown, message in (
        ("```bash\nmdrec-gate <new run dir>\n```\n", "placeholder <new run dir> is not in"),
        ("```bash\nmdrec-export <adapt run dir>\n```\n", "which no earlier README command runs"),
        ("```bash\nmdrec-train data=kuairand\n```\n", "data=kuairand has no fixture"),
        ("```bash\nmdrec-train data=partner\n```\n", "which no earlier README command runs"),
        ("```bash\nbash run.sh\n```\n", "'bash' is neither a console script"),
        ("```bash\npython -m pip install x\n```\n", "'python' is neither a console script"),
        ("```bash\nmdrec-report logs | tee out\n```\n", "shell syntax"),
    ):
        with pytest.raises(AssertionError, match=re.escape(message)):
            plan(markdown)
    steps, exempt = plan("```bash\npython3 -m venv .venv && .venv/bin/python -m mdrec.train x=1 \\\n  y=2  # c\n```\n")
    assert steps == [Step(".venv/bin/python -m mdrec.train x=1 y=2", TRAIN, ("x=1", "y=2"), module="mdrec.train")]
    assert list(exempt) == ["python3 -m venv .venv"]
    assert fast(["-m", "seed=0,1", "debug=limit"], Path("/o")) == (
        ["-m", "seed=0,1", "debug=limit", f"data.source.num_rows={FAST_ROWS}", "hydra.sweep.dir=/o"],
        Path("/o"),
    )


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path) -> None:
    steps, _ = plan((REPO / "README.md").read_text())
    work = tmp_path / "work"  # the directory every command runs from: logs/, data/, pretrained/ land here
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MDREC_ROOT", "MDREC_DATA_DIR", "WANDB_MODE")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    produced: dict[str, Path] = {}
    for i, step in enumerate(steps):
        args = list(step.args)
        for placeholder in {p for a in args for p in PLACEHOLDER.findall(a)}:
            args = [a.replace(placeholder, str(produced[PLACEHOLDERS[placeholder]])) for a in args]
        script = BIN / step.program
        launcher = [sys.executable, "-m", step.module] if step.module else [str(script)]
        assert step.module or script.exists(), f"{script} is missing: the environment is older than pyproject.toml"
        command, out = [*launcher, *args], None
        if step.program == TRAIN:
            args, out = fast(args, tmp_path / "runs" / f"{i:02d}")
            name = dataset(args)
            command = [*(FIXTURES[name](work) if name in FIXTURES else launcher), *args]
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        code, verdict = OUTCOMES.get(step.program, (0, ""))
        ok = done.returncode == 0 or (done.returncode == code and verdict in done.stdout)
        assert ok, f"README command `{step.text}` ran as {command}: exit {done.returncode}\n{done.stderr[-3000:]}"
        if out is not None:
            out = work / out  # relative to the directory it ran from
            assert any(out.glob("**/metrics.json")), f"README command `{step.text}` wrote no metrics.json in {out}"
            produced[step.text] = out
