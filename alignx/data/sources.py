"""Dataset sources: load the rows of one split from a file, a Hub dataset or a builtin task.

Each loader has the signature ``(cfg, kind, split, seed) -> list[dict]`` where ``cfg`` is the
``dataset`` config node (DictConfig or dict), ``kind`` a row kind (see
:mod:`alignx.data.formats`) and ``split`` one of "train", "val", "test". Rows come back validated
and normalised; any problem is a :class:`DataError` naming the file, the row and the file's own
column name.

Splits for file-based sources (jsonl, parquet, hub):

* train: the train file(s);
* val: the val file(s) if given, else a seeded ``val_fraction`` of the train rows, which the train
  split then excludes (same seed -> same split). With neither, val is empty;
* test: the test file(s) if given, else the val rows.

``columns`` maps canonical column names to the file's names, e.g. ``{prompt: question,
completion: answer}``; unmapped names map to themselves. ``format`` names a registered row
format (registry kind "format", e.g. the presets in :mod:`alignx.data.presets`): a function
``(raw row: dict, dataset cfg) -> row dict`` (:data:`alignx.data.formats.RowFormat`) applied to
every raw row before ``columns`` and validation; it rejects a row naming a column with
:class:`alignx.data.formats.FormatError`. Null means the rows are already canonical.

Invalid rows raise, or are dropped and counted under ``data.invalid_rows=drop`` (see
:func:`alignx.data.formats.collect_invalid_rows`). Loaders return a :class:`SplitRows`: a list
that also remembers each row's file and row number, for errors found after loading.
"""

from __future__ import annotations

import glob
import gzip
import inspect
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from alignx.data.formats import (
    CANONICAL_COLUMNS,
    FormatError,
    RowError,
    RowFormat,
    check_kind,
    reject_row,
    validate_row,
)
from alignx.errors import ConfigError, DataError, PluginError
from alignx.registry import load_plugins

SPLITS = ("train", "val", "test")
#: where a Hub-style directory keeps a split's files, tried in order; the first that matches wins
HUB_LAYOUTS = (
    "{split}.jsonl",
    "{split}.parquet",
    "data/{split}-*.parquet",
    "data/{split}.jsonl",
    "{split}/*.parquet",
    "{split}-*.parquet",
    "{split}.jsonl.gz",
    "*/{split}.jsonl.gz",  # Anthropic/hh-rlhf: harmless-base/train.jsonl.gz, helpful-base/...
)
_HUB_PATTERNS = ["*.jsonl", "*.jsonl.gz", "*.json", "*.parquet", "*.md"]

Locate = Callable[[str], list[Path] | None]
#: (source, 1-based row number) of a row, for error messages
Location = tuple[str, int | None]
#: a row format bound to its dataset config: (raw row, source, row number) -> row
_AppliedFormat = Callable[[Any, str, int], Any]


class SplitRows(list):
    """The validated rows of one split: a plain list to every consumer, plus provenance.

    ``locations[i]`` is the (file, row number) row ``i`` came from, so a problem found after
    loading (a row too long for ``data.max_length``) can still name the file and line; ``split``
    names the split; ``invalid_dropped`` counts rows left out under ``data.invalid_rows=drop``.
    """

    def __init__(
        self,
        rows: Iterable[dict] = (),
        *,
        locations: Iterable[Location] | None = None,
        split: str = "",
        invalid_dropped: int = 0,
    ) -> None:
        super().__init__(rows)
        self.locations = None if locations is None else list(locations)
        self.split = split
        self.invalid_dropped = invalid_dropped

    def location(self, index: int) -> Location:
        """Where row ``index`` (0-based) came from; without recorded locations, its position in the split."""
        if self.locations is not None and 0 <= index < len(self.locations):
            return self.locations[index]
        return (f"{self.split or 'data'} split", index + 1)


# ---------------------------------------------------------------- reading files


def _resolve(path: Any) -> Path:
    from hydra.utils import (
        to_absolute_path,  # relative to the launch directory even if Hydra chdir'd
    )

    return Path(to_absolute_path(os.path.expanduser(str(path))))


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    # a generator, so that problems are reported (or dropped) in file order, with validation
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:  # one bad line is an invalid row: data.invalid_rows decides
                    what = e.msg.removesuffix(" at")
                    reject_row(RowError(f"invalid JSON: {what} at character {e.colno}", source=str(path), row=line_no, reason="invalid JSON"))
                    continue
                except ValueError as e:  # bad UTF-8
                    reject_row(RowError(f"invalid JSON line: {e}", source=str(path), row=line_no, reason="invalid JSON"))
                    continue
                yield line_no, row
    except (OSError, EOFError) as e:  # e.g. a truncated or non-gzip .gz file
        raise DataError(f"could not read file: {type(e).__name__}: {e}", source=str(path)) from None


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"could not read parquet file: {type(e).__name__}: {e}", source=str(path)) from None
    return list(enumerate(table.to_pylist(), 1))


def _file_format(path: Path) -> str:
    return "jsonl" if path.name.endswith((".jsonl", ".jsonl.gz")) else path.suffix.lstrip(".")


def _read_file(path: Path, fmt: str) -> Iterable[tuple[int, Any]]:
    """Raw rows of a ``fmt`` ("jsonl" | "parquet") file, each with its 1-based row number
    (jsonl: the line number, blank lines counted; parquet: the row index). A ``.gz`` jsonl file
    is decompressed."""
    if not path.exists():
        raise DataError("file does not exist", source=str(path))
    if not path.is_file():
        raise DataError("not a file", source=str(path))
    return _read_jsonl(path) if fmt == "jsonl" else _read_parquet(path)


def _columns(cfg: Mapping) -> dict[str, str]:
    columns = {str(k): str(v) for k, v in (cfg.get("columns") or {}).items()}
    unknown = sorted(set(columns) - set(CANONICAL_COLUMNS))
    if unknown:
        raise ConfigError(
            f"dataset.columns maps {unknown}, which are not canonical column names; it maps canonical "
            f"names {list(CANONICAL_COLUMNS)} to the file's column names, e.g. {{prompt: question}}"
        )
    return columns


def _row_format(cfg: Mapping) -> _AppliedFormat | None:
    """``dataset.format`` as ``(raw row, source, row number) -> row``, or None when not set.

    Anything the format raises becomes a :class:`DataError` naming the file, the row and the
    column: a :class:`~alignx.data.formats.FormatError`'s ``column``, or a KeyError's key. A
    format that cannot be called as ``(raw row, dataset cfg)`` is one :class:`PluginError`
    before any row is read (not one error per row).
    """
    name = cfg.get("format")
    if name is None or str(name) == "":
        return None

    registry = load_plugins()
    if ("format", str(name)) not in registry:
        raise ConfigError(
            f"dataset.format='{name}' is not a registered row format. Valid: {', '.join(registry.names('format'))} "
            "(or null when the rows already use alignx's column names)"
        )
    fn: RowFormat = registry.get("format", str(name))
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no introspectable signature (a builtin): let the first row tell
        signature = None
    if signature is not None:
        try:
            signature.bind({}, cfg)
        except TypeError:
            raise PluginError(
                f"dataset.format={name}: the registered row format takes {signature}; a row format takes "
                "(raw row: dict, dataset cfg) and returns the row as a dict"
            ) from None

    def apply(row: Any, source: str, number: int) -> Any:
        if not isinstance(row, Mapping):
            return row  # validation reports it
        try:
            out = fn(row, cfg)
        except FormatError as e:
            raise RowError(f"dataset.format={name}: {e}", source=source, row=number, column=e.column,
                           reason=e.reason or f"format '{name}' failed") from None
        except KeyError as e:  # row["x"] on a row without x
            column = str(e.args[0]) if e.args else None
            raise RowError(f"dataset.format={name}: missing column; the row has columns {sorted(row)}", source=source,
                           row=number, column=column, reason=f"format '{name}' failed") from None
        except Exception as e:  # noqa: BLE001 -- any failure of a format is a problem with this row
            detail = str(e) if isinstance(e, ValueError) and str(e) else f"{type(e).__name__}: {e}"
            raise RowError(f"dataset.format={name}: {detail}", source=source, row=number, reason=f"format '{name}' failed") from None
        if not isinstance(out, Mapping):
            raise RowError(
                f"dataset.format={name} returned {type(out).__name__}, not a row dict", source=source, row=number, reason=f"format '{name}' failed"
            )
        return out

    return apply


def _validated(
    raw: Iterable[tuple[str, int, Any]], kind: str, columns: Mapping[str, str], row_format: _AppliedFormat | None
) -> list[tuple[Location, dict]]:
    """Format and validate (source, row number, raw row) triples; invalid rows go to :func:`reject_row`."""
    out = []
    for source, n, row in raw:
        try:
            if row_format is not None:
                row = row_format(row, source, n)
            out.append(((source, n), validate_row(row, kind, source, n, columns=columns)))
        except DataError as err:
            reject_row(err, kind)
    return out


def _load_file(path: Path, fmt: str, kind: str, columns: Mapping[str, str], row_format: _AppliedFormat | None = None) -> list[tuple[Location, dict]]:
    """Read, format, column-map and validate one file; rows come with their locations."""
    return _validated(((str(path), n, row) for n, row in _read_file(path, fmt)), kind, columns, row_format)


# ---------------------------------------------------------------- splits


def _split_off_val(rows: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded split of ``rows`` into (train, val); both keep file order."""
    n = len(rows)
    n_val = round(n * fraction)
    if fraction > 0 and n > 1:  # a tiny file still gets a val row, and keeps a train row
        n_val = min(max(n_val, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def _load_split(cfg: Mapping, kind: str, split: str, seed: int, locate: Locate, fmt: str | None) -> SplitRows:
    """The split logic shared by file-based sources. ``locate(split)`` gives that split's files,
    or None when it has none of its own; ``fmt`` None means "by file suffix"."""
    check_kind(kind)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    columns = _columns(cfg)
    row_format = _row_format(cfg)

    def read(files: list[Path]) -> list[tuple[Location, dict]]:
        return [item for p in files for item in _load_file(p, fmt or _file_format(p), kind, columns, row_format)]

    def done(items: list[tuple[Location, dict]]) -> SplitRows:
        return SplitRows((row for _, row in items), locations=(loc for loc, _ in items), split=split)

    if split == "test" and (files := locate("test")) is not None:
        return done(read(files))
    if split in ("val", "test") and (files := locate("val")) is not None:
        return done(read(files))
    train = read(locate("train") or [])
    if split == "train" and locate("val") is not None:
        return done(train)
    fraction = float(cfg.get("val_fraction") or 0.0)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"dataset.val_fraction must be in [0, 1), got {fraction}")
    train, val = _split_off_val(train, fraction, seed)
    return done(train if split == "train" else val)


def _path_locator(cfg: Mapping) -> Locate:
    def locate(split: str) -> list[Path] | None:
        key = "path" if split == "train" else f"{split}_path"
        value = cfg.get(key)
        if value is None and split == "train":
            raise ConfigError("dataset.path (the train file) is required")
        return None if value is None else [_resolve(value)]

    return locate


def dataset_files(cfg: Mapping, splits: Sequence[str] = SPLITS) -> list[Path]:
    """The local files a ``jsonl``/``parquet`` dataset config names for ``splits`` (none for other sources)."""
    if cfg.get("source") not in ("jsonl", "parquet"):
        return []
    locate = _path_locator(cfg)
    return [path for split in splits for path in locate(split) or []]


def check_files(cfg: Mapping) -> None:
    """The files a ``jsonl``/``parquet`` dataset config names exist (the same DataError the loader
    raises, but without reading a row: the command line checks this before loading the training stack)."""
    for path in dataset_files(cfg):
        if not path.is_file():
            raise DataError("file does not exist", source=str(path))


# ---------------------------------------------------------------- loaders


def load_jsonl(cfg: Mapping, kind: str, split: str, seed: int) -> SplitRows:
    """Rows of ``split`` from JSON-lines files (``.jsonl``, or gzip-compressed ``.jsonl.gz``).

    Keys: ``path`` (train file), ``val_path``, ``test_path`` (optional), ``val_fraction``,
    ``columns``, ``format``; see the module docstring for how splits are made. One JSON object
    per line; blank lines are skipped. Errors name the file, its line number and the file's
    column name.
    """
    return _load_split(cfg, kind, split, seed, _path_locator(cfg), "jsonl")


def load_parquet(cfg: Mapping, kind: str, split: str, seed: int) -> SplitRows:
    """Rows of ``split`` from parquet files; same keys as :func:`load_jsonl`.
    Errors name the file, the 1-based row index and the file's column name."""
    return _load_split(cfg, kind, split, seed, _path_locator(cfg), "parquet")


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; honour a value set later too
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub_dir(cfg: Mapping) -> Path:
    """The dataset's local directory: ``id`` itself if it is one, else a Hub snapshot."""
    ds_id = str(cfg.get("id") or "")
    if not ds_id:
        raise ConfigError("dataset.id (a Hugging Face Hub dataset id or a local directory) is required")
    local = _resolve(ds_id)
    if local.is_dir():
        return _data_dir(local, cfg)
    if ds_id.startswith(("/", ".", "~")) or local.exists():
        raise DataError("not an existing directory (nor a Hub dataset id)", source=str(local))
    from huggingface_hub import snapshot_download

    offline = _offline()
    try:
        root = Path(
            snapshot_download(
                repo_id=ds_id,
                repo_type="dataset",
                revision=cfg.get("revision"),
                allow_patterns=_HUB_PATTERNS,
                local_files_only=offline,
            )
        )
    except Exception as e:  # offline, not found, gated, bad id...: all mean "could not fetch"
        if offline:  # the client's own text here talks about arguments the user never passed
            reason = "HF_HUB_OFFLINE is set and the dataset is not in the local Hub cache"
        else:
            reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        raise DataError(
            f"could not fetch the dataset from the Hugging Face Hub ({reason}). Check the dataset id "
            "and your network connection, or download the dataset and pass its local directory: "
            "dataset.id=/path/to/dir",
            source=ds_id,
        ) from None
    return _data_dir(root, cfg)


def _data_dir(root: Path, cfg: Mapping) -> Path:
    """``root``, or its ``data_dir`` subdirectory (one subset, e.g. hh-rlhf's ``harmless-base``)."""
    sub = cfg.get("data_dir")
    if not sub:
        return root
    path = root / str(sub)
    if not path.is_dir():
        subsets = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(f"dataset.data_dir '{sub}' is not a directory of the dataset; it has {subsets}", source=str(root))
    return path


def _find_split_files(root: Path, name: str) -> list[Path]:
    for layout in HUB_LAYOUTS:
        found = sorted(root.glob(layout.format(split=glob.escape(name))))
        if found:
            return found
    existing = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    layouts = [layout.format(split=name) for layout in HUB_LAYOUTS]
    more = f" (and {len(existing) - 50} more)" if len(existing) > 50 else ""
    raise DataError(
        f"no files found for split '{name}'; looked for {layouts}; the directory has {existing[:50]}{more}",
        source=str(root),
    )


def load_hub(cfg: Mapping, kind: str, split: str, seed: int) -> SplitRows:
    """Rows of ``split`` from a Hugging Face Hub dataset or a local directory in Hub layout.

    Keys: ``id`` (Hub dataset id, or a local directory, which is used as is), ``revision``,
    ``data_dir`` (optional subdirectory holding one subset), ``splits`` (alignx split -> the
    dataset's split name; default ``{train: train}``: an unmapped val comes from
    ``val_fraction`` and an unmapped test is the val rows), ``columns``, ``format``.
    A split's files are found with the first of :data:`HUB_LAYOUTS` that matches (jsonl,
    jsonl.gz or parquet; several shards are read in sorted order). Fetch failures (offline,
    unknown id) become a short :class:`DataError`.
    """
    root = _hub_dir(cfg)
    splits = {"train": "train", **{str(k): v for k, v in (cfg.get("splits") or {}).items()}}

    def locate(s: str) -> list[Path] | None:
        name = splits.get(s)
        if name is None and s == "train":
            raise ConfigError("dataset.splits.train (the dataset's train split name) must be set")
        return None if name is None else _find_split_files(root, str(name))

    return _load_split(cfg, kind, split, seed, locate, None)


def load_builtin(cfg: Mapping, kind: str, split: str, seed: int) -> SplitRows:
    """Rows of ``split`` generated by a builtin task.

    Keys: ``task`` (a registered task name), ``n_train`` / ``n_val`` /
    ``n_test`` (row counts), ``label_noise`` (default 0), ``ranked_k`` (completions per
    ranked row; passed to the task's ``rows`` as ``k`` for kind "ranked"), ``rating_noise`` (the
    std of the Gaussian noise on the gold reward of rated rows; passed as ``rating_noise`` for
    kind "rated").
    """

    registry = load_plugins()
    name = cfg.get("task")
    if ("task", str(name)) not in registry:
        raise DataError(f"unknown builtin task {name!r}; valid tasks: {registry.names('task')}", source="dataset.task")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    n = cfg.get(f"n_{split}")
    if n is None:
        raise ConfigError(f"dataset.n_{split} (the number of {split} rows) is required for builtin tasks")
    label_noise = float(cfg.get("label_noise") or 0.0)
    task = registry.get("task", name)()
    extra = {}
    if kind == "ranked":
        params = inspect.signature(task.rows).parameters
        if "k" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ConfigError(f"builtin task '{name}' does not generate ranked rows (its rows() takes no 'k')")
        if cfg.get("ranked_k") is None:
            raise ConfigError(f"dataset.ranked_k (completions per ranked row) is required for ranked rows of builtin task '{name}'")
        extra["k"] = int(cfg["ranked_k"])
    if kind == "rated":
        params = inspect.signature(task.rows).parameters
        if "rating_noise" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ConfigError(f"builtin task '{name}' does not generate rated rows (its rows() takes no 'rating_noise')")
        if cfg.get("rating_noise") is None:
            raise ConfigError(f"dataset.rating_noise (the std of the noise on rated rows' gold reward) is required for rated rows "
                              f"of builtin task '{name}'")
        extra["rating_noise"] = float(cfg["rating_noise"])
    if kind == "steps":  # step-labelled rows (objective=prm): the share of corrupted solutions
        if cfg.get("corruption_rate") is None:
            raise ConfigError(f"dataset.corruption_rate (the share of corrupted solutions in steps rows) is required for steps "
                              f"rows of builtin task '{name}'")
        extra["corruption_rate"] = float(cfg["corruption_rate"])
    rows = task.rows(kind, split, int(n), seed=seed, label_noise=label_noise, **extra)
    source = f"builtin task '{name}' ({split} split)"
    items = _validated(((source, i, row) for i, row in enumerate(rows, 1)), kind, {}, None)
    return SplitRows((row for _, row in items), locations=(loc for loc, _ in items), split=split)


#: source kind (the ``dataset.source`` config value) -> loader
SOURCES: dict[str, Callable[[Mapping, str, str, int], list[dict]]] = {
    "jsonl": load_jsonl,
    "parquet": load_parquet,
    "hub": load_hub,
    "builtin": load_builtin,
}
