"""Read the input formats users have into raw entries (id, structure, raw target, optional text).

Formats:
- ``dft3d_json``: a JARVIS ``dft_3d``-style list of records (``jid``, ``atoms``, targets; ``"na"`` = missing),
  as ``.json``, ``.json.gz`` or the ``.zip`` that ``jarvis.db.figshare`` stores; or a jarvis dataset *name*
  (e.g. ``dft_3d``) whose zip lies in ``<cache_dir>/jarvis_data/``.
- ``alignn_folder``: structure files (POSCAR / CIF) + ``id_prop.csv`` (``filename,value``, no header).
- ``description_csv``: ``description.csv`` (``id, composition, target, description, file``, read by position)
  + the CIF files in ``cif/`` beside it; the descriptions come from the file.

Nothing here parses structures or filters targets: that is ``records.py``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import re
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tune_fusion.config import TARGET_ALIASES
from tune_fusion.errors import DataError, reading

__all__ = ["ALIGNN_CSV", "DESCRIPTION_CSV", "FORMATS", "RawEntry", "Source", "locate", "published_layout",
           "read_entries", "sidecar_path"]

log = logging.getLogger(__name__)

FORMATS = ("dft3d_json", "alignn_folder", "description_csv")
# (number of columns, column holding the target value, what the columns are)
ALIGNN_CSV = (2, 1, "filename,value (no header)")
DESCRIPTION_CSV = (5, 2, "id, composition, target, description, file")
_HELP = (
    "supported inputs: a dft_3d-style .json/.json.gz/.zip, a jarvis dataset name such as dft_3d (zip in "
    "<cache_dir>/jarvis_data), an ALIGNN folder with id_prop.csv, or a description.csv with a cif/ folder"
)


@dataclass(frozen=True)
class RawEntry:
    """One row of a dataset before parsing: ``structure`` is a jarvis ``Atoms`` dict or a file path."""

    jid: str
    structure: dict[str, Any] | Path
    target: Any
    text: str | None = None


@dataclass(frozen=True)
class Source:
    """A located dataset: its format, the files whose bytes define its content, and how to read it."""

    path: Path
    format: str
    content_files: tuple[Path, ...]

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the bytes of every file the dataset is made of (names included)."""
        digest = hashlib.sha256()
        for file in self.content_files:
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def locate(dataset: str, cache_dir: str | Path) -> Source:
    """Find the dataset on disk and tell its format; raises DataError naming the path and the fix.

    Descriptions shipped beside the dataset (``sidecar_path``) count as part of its content.
    """
    source = _locate(dataset, cache_dir)
    sidecar = sidecar_path(source.path)
    if sidecar.is_file():
        return Source(source.path, source.format, (*source.content_files, sidecar))
    return source


def sidecar_path(dataset_path: Path) -> Path:
    """Where descriptions shipped with a dataset live: ``<stem>.descriptions.csv.gz`` beside a file, or
    ``descriptions.csv.gz`` inside a dataset folder."""
    if dataset_path.is_dir():
        return dataset_path / "descriptions.csv.gz"
    stem = re.sub(r"(\.json\.gz|\.json|\.zip|\.csv)$", "", dataset_path.name)
    return dataset_path.with_name(f"{stem}.descriptions.csv.gz")


def _locate(dataset: str, cache_dir: str | Path) -> Source:
    path = Path(dataset).expanduser()
    if not path.exists():
        by_name = _jarvis_zip(dataset, Path(cache_dir).expanduser())
        if by_name is not None:
            return Source(by_name, "dft3d_json", (by_name,))
        raise DataError(f"dataset '{dataset}' not found: no such file or folder ({_HELP})")
    if path.is_dir():
        if (path / "id_prop.csv").is_file():
            return _alignn_source(path / "id_prop.csv")
        if (path / "description.csv").is_file():
            return _description_source(path / "description.csv")
        raise DataError(f"dataset folder '{path}' has neither id_prop.csv nor description.csv ({_HELP})")
    name = path.name.lower()
    if name.endswith((".json", ".json.gz", ".zip")):
        return Source(path, "dft3d_json", (path,))
    if name == "id_prop.csv":
        return _alignn_source(path)
    if name.endswith(".csv"):
        return _description_source(path)
    raise DataError(f"dataset '{path}': unknown file format '{path.suffix}' ({_HELP})")


def _jarvis_zip(name: str, cache_dir: Path) -> Path | None:
    if "/" in name or "." in name:
        return None
    from jarvis.db.figshare import get_db_info

    info = get_db_info().get(name)
    if info is None:
        return None
    zip_path = cache_dir / "jarvis_data" / f"{info[1]}.zip"
    if not zip_path.is_file():
        raise DataError(
            f"dataset '{name}' is a jarvis dataset but {zip_path} is not on disk and nothing is downloaded at run "
            f"time; download {info[0]} elsewhere and place it there as {zip_path.name}"
        )
    return zip_path


def _alignn_source(id_prop: Path) -> Source:
    rows = _read_csv(id_prop, ALIGNN_CSV)
    files = tuple(sorted({id_prop.parent / row[0] for row in rows if (id_prop.parent / row[0]).is_file()}))
    return Source(id_prop.parent, "alignn_folder", (id_prop, *files))


def _description_source(csv_path: Path) -> Source:
    rows = _read_csv(csv_path, DESCRIPTION_CSV)
    cif_dir = _cif_dir(csv_path)
    files = tuple(sorted({cif_dir / row[4] for row in rows if (cif_dir / row[4]).is_file()}))
    return Source(csv_path, "description_csv", (csv_path, *files))


def _cif_dir(csv_path: Path) -> Path:
    return csv_path.parent / "cif" if (csv_path.parent / "cif").is_dir() else csv_path.parent


def _read_csv(path: Path, layout: tuple[int, int, str]) -> list[list[str]]:
    expected_columns, value_column, columns_help = layout
    with reading(path, "dataset table", f"it must be a UTF-8 CSV of {columns_help}"), \
            open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path} is empty; it needs rows of: {columns_help}")
    bad = next((i for i, row in enumerate(rows) if len(row) < expected_columns), None)
    if bad is not None:
        raise DataError(
            f"{path} row {bad + 1} has {len(rows[bad])} column(s), expected {expected_columns} "
            f"({columns_help}); fix the CSV or point --dataset at the right file"
        )
    if not _is_number(rows[0][value_column]):
        rows = rows[1:]  # a header row
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() == "na"
    return True


def read_entries(source: Source, target: str) -> list[RawEntry]:
    """All entries of ``source``, with the raw value of ``target`` (not yet filtered)."""
    if source.format == "dft3d_json":
        return _dft3d_entries(source.path, target)
    if source.format == "alignn_folder":
        rows = _read_csv(source.path / "id_prop.csv", ALIGNN_CSV)
        return [RawEntry(Path(row[0]).stem, source.path / row[0], row[1]) for row in rows]
    rows = _read_csv(source.path, DESCRIPTION_CSV)
    cif_dir = _cif_dir(source.path)
    return [RawEntry(row[0], cif_dir / row[4], row[2], row[3]) for row in rows]


def _dft3d_entries(path: Path, target: str) -> list[RawEntry]:
    records = _load_json_records(path)
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        raise DataError(f"{path} is not a dft_3d-style list of records (each a dict with 'jid' and 'atoms')")
    keys = set().union(*(r.keys() for r in records[:1000]))
    if "atoms" not in keys:
        raise DataError(f"{path}: records have no 'atoms' field (found: {', '.join(sorted(keys))})")
    if target not in keys:
        numeric = sorted(k for k in keys if k not in {"jid", "atoms", "description", "text"})
        raise DataError(f"target '{target}' is not in {path}; available targets: {', '.join(numeric)}")
    text_key = "description" if "description" in keys else None
    return [
        RawEntry(str(r.get("jid", f"row-{i}")), r.get("atoms"), r.get(target, "na"), r.get(text_key) if text_key else None)
        for i, r in enumerate(records)
    ]


def _load_json_records(path: Path) -> Any:
    with reading(path, "dataset", "download it again or point --dataset at a dft_3d-style .json, .json.gz or .zip"):
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n.endswith(".json")]
                if not members:
                    raise DataError(f"{path} holds no .json file; expected the zip that jarvis.db.figshare stores")
                return json.loads(archive.read(members[0]))
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            return json.load(handle)


def published_layout(root_dir: str, target: str) -> str:
    """``ROOT/jarvis/<property>/description.csv`` of the published text+graph datasets (either name form)."""
    names = [target] + [short for short, full in TARGET_ALIASES.items() if full == target]
    for name in names:
        candidate = Path(root_dir).expanduser() / "jarvis" / name / "description.csv"
        if candidate.is_file():
            return str(candidate)
    raise DataError(f"dataset jarvis with root_dir {root_dir}: no jarvis/<property>/description.csv for "
                    f"{' or '.join(names)} under {root_dir}")
