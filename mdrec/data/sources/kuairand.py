"""KuaiRand-1K (or KuaiRand-Pure) with the app page ``tab`` as the domain: the Scenario-Wise-Rec protocol.

Raw data (CC BY-SA 4.0) come from zenodo (https://zenodo.org/records/10439422). In order:

1. ``path``, when given: the release's ``.tar.gz`` (md5 checked) or the folder it extracts to;
2. the archive cached in ``raw_dir`` when its md5 matches;
3. a download from zenodo into ``raw_dir`` (``pooch``: short timeout, md5 checked).

The archive is read in place (one streaming pass over the tar, nothing extracted). Files, all comma-separated
with a header (docs/datasets.md, KuaiRand): the interaction logs ``log_standard_4_08_to_4_21_<v>.csv`` and
``log_standard_4_22_to_5_08_<v>.csv`` (``user_id, video_id, date, hourmin, time_ms, is_click, ..., tab``),
``user_features_<v>.csv`` and ``video_features_basic_<v>.csv``.

As Scenario-Wise-Rec's ``load_data_1k.py`` and ``run_kuairand_ctr_multi_domain.py``:

- rows with ``tab`` in {0, 1, 2, 4, 6} are kept (domains ``tab0 .. tab6``, in that order: its D0 .. D4); the rows
  of other tabs are dropped and counted (``report.json``, ``raw``);
- label ``is_click``; each row joined with its user's features and its video's basic features (inner joins:
  rows without either are dropped and counted);
- video columns ``upload_dt, upload_type, tag, video_duration, music_type, music_id, author_id`` are dropped,
  and so are the log's watch-time columns (``play_time_ms, duration_ms, profile_stay_time, comment_stay_time``:
  they are measured after the click);
- dense: ``follow_user_num, fans_user_num, friend_user_num, register_days`` (min-max); every other kept column
  is sparse (user_id, video_id, 26 user features, video_type, visible_status, server_width, server_height);
  a missing value (empty field) is id 0, which is Scenario-Wise-Rec's fill-with-a-new-category in effect;
- vocabularies over all rows; split: ``RandomSplit`` 80/10/10 in the data config. ``time_ms`` is kept as
  the time column, so ``TemporalSplit`` works too.

Row-count caveat (docs/datasets.md, KuaiRand): Scenario-Wise-Rec's loader reads only
``log_standard_4_22_to_5_08_1k.csv``, yet its published domain sizes (2,407,352 / 7,760,237 / 895,385 / 402,366 /
183,403: 11.65M rows) match both standard logs together (11.71M interactions before the tab filter). Both logs are
the default here; set ``logs`` to the second one alone to follow the loader, and compare row counts before comparing
numbers.

Memory: the logs and feature files are parsed whole, so peak memory grows with the log rows (scripts/README.md
has a measured figure per row).
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc

from mdrec.data.ingest import EncodedTable, TableSpec, encode_table
from mdrec.data.sources.raw import (
    CsvSource,
    KeyIndex,
    download,
    file_signature,
    find_files,
    md5_file,
    missing_files,
    read_csv,
)

ZENODO = "https://zenodo.org/records/10439422"
LOGS = ("log_standard_4_08_to_4_21", "log_standard_4_22_to_5_08")
TABS = (0, 1, 2, 4, 6)
LOG_COLUMNS = {
    "user_id": pa.int64(),
    "video_id": pa.int64(),
    "time_ms": pa.int64(),
    "is_click": pa.int8(),
    "tab": pa.int64(),
}
USER_SPARSE = (
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
)
USER_DENSE = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
VIDEO_SPARSE = ("video_type", "visible_status", "server_width", "server_height")
DOMAIN = "tab"
LABEL = "is_click"
TIME = "time_ms"


@dataclass(frozen=True)
class Release:
    """One KuaiRand release on zenodo.

    Args:
        name: archive stem and top folder, e.g. ``KuaiRand-1K``.
        suffix: the suffix of its file names (``1k``, ``pure``).
        md5: md5 of ``<name>.tar.gz``.

    Example:
        >>> RELEASES["1k"].url
        'https://zenodo.org/records/10439422/files/KuaiRand-1K.tar.gz?download=1'
    """

    name: str
    suffix: str
    md5: str

    @property
    def archive(self) -> str:
        return f"{self.name}.tar.gz"

    @property
    def url(self) -> str:
        return f"{ZENODO}/files/{self.archive}?download=1"


RELEASES = {
    "1k": Release("KuaiRand-1K", "1k", "6b0b9c8222d67fcd4c676218edca3f1f"),
    "pure": Release("KuaiRand-Pure", "pure", "0820331067a3784d9691136f772b35a7"),
}


@dataclass
class KuaiRand:
    """KuaiRand with 5 ``tab`` domains and label ``is_click`` (Scenario-Wise-Rec); see the module docstring.

    Args:
        version: ``1k`` (KuaiRand-1K) or ``pure`` (KuaiRand-Pure).
        path: the release's ``.tar.gz`` or the folder it extracts to; None: the archive cached in (or
            downloaded into) ``raw_dir``.
        logs: the interaction logs read (file names without ``_<version>.csv``), concatenated in this order.
        tabs: the ``tab`` values kept, in domain order.

    Example:
        >>> KuaiRand(version="pure").dataset_id
        'kuairandpure'
    """

    version: str = "1k"
    path: str | None = None
    logs: Sequence[str] = LOGS
    tabs: Sequence[int] = TABS

    def __post_init__(self) -> None:
        if self.version not in RELEASES:
            raise ValueError(f"KuaiRand: version={self.version!r} is not one of {list(RELEASES)}")
        self.logs = tuple(str(x) for x in self.logs)
        self.tabs = tuple(int(t) for t in self.tabs)
        if not self.logs:
            raise ValueError(f"KuaiRand: `logs` is empty; name at least one of {list(LOGS)} (or log_random_...)")
        if not self.tabs or len(set(self.tabs)) != len(self.tabs):
            raise ValueError(f"KuaiRand: tabs {list(self.tabs)} must be distinct and not empty")

    @property
    def release(self) -> Release:
        return RELEASES[self.version]

    @property
    def dataset_id(self) -> str:
        return f"kuairand{self.version}"

    def input_signature(self) -> list[tuple[str, int, int]] | None:
        """Path, size and modification time of a user-given archive or folder (None for the zenodo archive)."""
        if self.path is None or not Path(self.path).exists():
            return None
        path = Path(self.path)
        return file_signature(sorted(p for p in path.rglob("*.csv")) if path.is_dir() else [path])

    def _files(self) -> dict[str, str]:
        """Role -> file name: ``log:<name>`` for each log, ``user`` and ``video``."""
        v = self.release.suffix
        names = {f"log:{name}": f"{name}_{v}.csv" for name in self.logs}
        return {**names, "user": f"user_features_{v}.csv", "video": f"video_features_basic_{v}.csv"}

    def fetch(self, raw_dir: Path) -> tuple[str, Path]:
        """Find or download the raw data: ``("archive", tar.gz)`` or ``("directory", folder)`` (module doc)."""
        release = self.release
        if self.path is not None:
            path = Path(self.path)
            if path.is_dir():
                return "directory", path
            if not path.is_file():
                raise FileNotFoundError(
                    f"KuaiRand: data.source.path {path} does not exist; give the {release.archive} from {ZENODO} "
                    "or the folder it extracts to, or set path to null to download it"
                )
            if (md5 := md5_file(path)) != release.md5:
                raise ValueError(
                    f"KuaiRand: {path} has md5 {md5}, not the published {release.md5} of {release.archive}; it is "
                    f"damaged or another release: download it again from {ZENODO}"
                )
            return "archive", path
        try:  # the archive cached in raw_dir when its md5 matches, else downloaded (again)
            return "archive", download(release.url, Path(raw_dir) / release.archive, release.md5)
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors; ValueError: md5 mismatch
            raise RuntimeError(
                f"cannot get {release.archive}: {e}. Download it from {ZENODO} (md5 {release.md5}) into "
                f"{Path(raw_dir)}, or set data.source.path to the archive or the folder it extracts to; then run "
                "again"
            ) from e

    def read(self, kind: str, path: Path) -> dict[str, pa.Table]:
        """Role -> table of each needed file, from the archive (one streaming pass) or the folder.

        Raises:
            FileNotFoundError: naming the files the archive or folder lacks.
        """
        names = self._files()
        advice = (
            f"It is not (all of) {self.release.name} from {ZENODO}: download the archive again (or set path to null "
            "to download it), or check `version` and `logs`"
        )
        if kind == "directory":
            found = find_files(path, {role: [name] for role, name in names.items()}, "KuaiRand", advice)
            return {role: self._parse(role, p, str(p)) for role, p in found.items()}
        roles = {name: role for role, name in names.items()}
        tables: dict[str, pa.Table] = {}
        with tarfile.open(path, "r|gz") as tar:  # stream mode: members in archive order, read as they come
            for member in tar:
                role = roles.get(PurePosixPath(member.name).name)
                if role is not None and member.isfile():
                    tables[role] = self._parse(role, tar.extractfile(member), f"{path}:{member.name}")
                if len(tables) == len(roles):
                    break  # the rest (the 3 GB statistics file of 1K) is not needed
        missing = [name for role, name in names.items() if role not in tables]
        if missing:
            raise missing_files("KuaiRand", str(path), missing, advice)
        return tables

    def _parse(self, role: str, source: CsvSource, what: str) -> pa.Table:
        if role.startswith("log:"):
            return read_csv(source, LOG_COLUMNS, what, quoted=True)
        if role == "user":
            columns = {"user_id": pa.int64(), **dict.fromkeys((*USER_SPARSE, *USER_DENSE), pa.string())}
        else:
            columns = {"video_id": pa.int64(), **dict.fromkeys(VIDEO_SPARSE, pa.string())}
        return read_csv(source, columns, what, quoted=True, empty_as_null=True)

    def encode(self, raw_dir: Path) -> EncodedTable:
        """Fetch and read the files, keep the chosen tabs, join user and video features, and encode."""
        kind, path = self.fetch(Path(raw_dir))
        tables = self.read(kind, path)
        logs = pa.concat_tables([tables[f"log:{name}"] for name in self.logs])
        users, videos = tables["user"], tables["video"]
        tab = pc.index_in(logs[DOMAIN], value_set=pa.array(self.tabs, pa.int64()))
        domain = pc.fill_null(tab, -1).to_numpy(zero_copy_only=False)  # [n] index in `tabs`, -1: other tab
        user = KeyIndex(users["user_id"], f"{path}: user_features, column 'user_id'").rows(logs["user_id"])
        video = KeyIndex(videos["video_id"], f"{path}: video_features_basic, column 'video_id'").rows(logs["video_id"])
        in_tabs = domain >= 0
        no_user = in_tabs & (user < 0)
        no_video = in_tabs & (user >= 0) & (video < 0)
        keep = in_tabs & (user >= 0) & (video >= 0)
        names = tuple(f"tab{t}" for t in self.tabs)
        mask = pa.array(keep)
        columns = {c: logs[c].filter(mask) for c in ("user_id", "video_id", TIME, LABEL)}
        columns[DOMAIN] = pa.array(names).take(pa.array(domain[keep]))
        user_rows = users.take(pa.array(user[keep]))
        video_rows = videos.take(pa.array(video[keep]))
        columns.update({c: user_rows[c] for c in (*USER_SPARSE, *USER_DENSE)})
        columns.update({c: video_rows[c] for c in VIDEO_SPARSE})
        spec = TableSpec(
            sparse=("user_id", "video_id", *USER_SPARSE, *VIDEO_SPARSE),
            domain=DOMAIN,
            labels=(LABEL,),
            dense=USER_DENSE,
            domains=names,
            user="user_id",
            time=TIME,
            dense_scaling="minmax",
        )
        encoded = encode_table(pa.table(columns), spec, self.dataset_id)
        encoded.report["raw"] = {
            "layout": kind,
            "path": str(path),
            "logs": list(self.logs),
            "rows_read": len(domain),
            "dropped": {
                "tab_not_kept": int((~in_tabs).sum()),
                "no_user_features": int(no_user.sum()),
                "no_video_features": int(no_video.sum()),
            },
        }
        return encoded

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Write the prepared store to ``directory``; the archive is cached under ``raw_dir``."""
        self.encode(raw_dir).write(directory)
