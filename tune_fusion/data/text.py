"""Text descriptions of crystals: robocrystallographer, with jarvis-tools' describer as a per-structure fallback.

Generation costs 1-5 s per structure, so it runs in parallel (local processes, or Ray tasks when a search prepares
the data: on a cluster every node helps) and its results are stored in a description file that later preparations
(other targets, other graph settings) reuse.
The store is ``<cache_dir>/descriptions.csv.gz``, a gzipped CSV ``jid,structure_hash,method,description`` keyed
by structure; a file of the same format beside a dataset, ``<dataset stem>.descriptions.csv.gz``, is read too
(the bundled sample data ships one).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jarvis.core.atoms import Atoms

from tune_fusion.data.pool import MapFunction
from tune_fusion.errors import DataError, reading

__all__ = ["COLUMNS", "DescriptionStore", "clean_text", "describe", "describe_chunk", "fill_descriptions",
           "jarvis_text", "read_descriptions", "robocrys_text", "structure_hash", "write_descriptions"]

log = logging.getLogger(__name__)

_NUMPY_REPR = re.compile(r"np\.(?:int|float|uint|bool_?)\d*\((-?[\w.+-]+)\)")
COLUMNS = ("jid", "structure_hash", "method", "description")


def clean_text(text: str) -> str:
    """Remove numpy reprs robocrys leaves with numpy 2 ("np.int64(1)" -> "1") and squeeze white space."""
    return re.sub(r"\s+", " ", _NUMPY_REPR.sub(r"\1", text)).strip()


def structure_hash(atoms: Atoms) -> str:
    """A short content hash of a structure (lattice, species, fractional coordinates; rounded)."""
    payload = json.dumps(
        [
            [[round(float(x), 5) for x in row] for row in atoms.lattice_mat],
            list(atoms.elements),
            [[round(float(x), 5) for x in row] for row in atoms.frac_coords],
        ]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def robocrys_text(atoms: Atoms) -> str:
    """robocrystallographer's description (the text the published text+graph datasets use)."""
    from robocrys import StructureCondenser, StructureDescriber

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        condensed = StructureCondenser().condense_structure(atoms.pymatgen_converter())
        return clean_text(StructureDescriber().describe(condensed))


def jarvis_text(atoms: Atoms) -> str:
    """jarvis-tools' describer rendered to one string (fast; the fallback)."""
    info = atoms.describe()
    parts = [info.get("desc_2") or info.get("desc_3") or "", info.get("desc_1") or ""]
    return clean_text(" ".join(p for p in parts if p))


def describe(atoms_dict: dict[str, Any]) -> tuple[str, str]:
    """(description, method) for one structure; robocrys first, jarvis describer where robocrys fails."""
    atoms = Atoms.from_dict(atoms_dict)
    try:
        text = robocrys_text(atoms)
        if text:
            return text, "robocrys"
    except Exception as err:  # robocrys fails on some exotic structures: fall back and count it
        log.debug("robocrys failed (%s); using the jarvis describer", err)
    return jarvis_text(atoms), "jarvis"


def describe_chunk(atoms_dicts: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``describe`` over a chunk (one task's work)."""
    return [describe(d) for d in atoms_dicts]


class DescriptionStore:
    """Descriptions keyed by structure hash (the text depends on the structure only), in a gzipped CSV.

    ``save`` merges with what other processes wrote meanwhile, under a file lock, and replaces the file atomically.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, tuple[str, str, str]] = read_descriptions(path) if path.is_file() else {}

    def get(self, key: str) -> str | None:
        found = self.entries.get(key)
        return found[2] if found else None

    def add(self, key: str, jid: str, method: str, text: str) -> None:
        self.entries[key] = (jid, method, text)

    def save(self) -> None:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged = {**(read_descriptions(self.path) if self.path.is_file() else {}), **self.entries}
            write_descriptions(self.path, merged)


def read_descriptions(path: Path) -> dict[str, tuple[str, str, str]]:
    """``{structure_hash: (jid, method, description)}``."""
    with reading(path, "descriptions file", f"it must be a gzipped UTF-8 CSV with columns {','.join(COLUMNS)}: "
                 "replace it, or delete it (descriptions are then generated again)"), \
            gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        found = {row["structure_hash"]: (row["jid"], row["method"], row["description"]) for row in csv.DictReader(handle)}
    if not all(isinstance(v, str) for entry in found.values() for v in entry):
        raise DataError(f"descriptions file {path} has rows with missing columns; replace it, or delete it "
                        "(descriptions are then generated again)")
    return found


def write_descriptions(path: Path, entries: dict[str, tuple[str, str, str]]) -> None:
    """Atomic write (a temporary file renamed into place), rows sorted by id."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    rows = sorted((jid, key, method, text) for key, (jid, method, text) in entries.items())
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, path)


def fill_descriptions(
    jids: Sequence[str],
    structures: Sequence[Atoms],
    texts: Sequence[str | None],
    store: DescriptionStore,
    sidecar: Path | None,
    parallel_map: MapFunction,
) -> tuple[list[str], dict[str, int]]:
    """Every record's text: given, else from the sidecar or store, else generated (and saved to the store).

    Returns the texts and counts per source (``given``, ``stored``, ``robocrys``, ``jarvis``).
    """
    known = DescriptionStore(sidecar) if sidecar is not None and sidecar.is_file() else None
    out: list[str | None] = list(texts)
    counts = {"given": sum(t is not None for t in texts), "stored": 0, "robocrys": 0, "jarvis": 0}
    keys = [structure_hash(a) if t is None else "" for a, t in zip(structures, texts)]
    missing = []
    for i, key in enumerate(keys):
        if out[i] is not None:
            continue
        out[i] = (known.get(key) if known else None) or store.get(key)
        if out[i] is None:
            missing.append(i)
        else:
            counts["stored"] += 1
    if missing:
        log.info("generating %d text description(s) with robocrystallographer", len(missing))
        chunks = [missing[i : i + 8] for i in range(0, len(missing), 8)]
        results = parallel_map(describe_chunk, [[structures[i].to_dict() for i in c] for c in chunks], "describe")
        for chunk, described in zip(chunks, results):
            for i, (text, method) in zip(chunk, described):
                out[i] = text
                counts[method] += 1
                store.add(keys[i], jids[i], method, text)
        store.save()
    if counts["jarvis"]:
        log.warning("robocrystallographer failed on %d structure(s); used the jarvis-tools describer", counts["jarvis"])
    return [t or "" for t in out], counts
