"""Raw entries -> records (id, jarvis Atoms, finite target, optional text), with an account of what was dropped."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jarvis.core.atoms import Atoms

from tune_fusion.data.sources import RawEntry, Source
from tune_fusion.errors import DataError

__all__ = ["Record", "RecordReport", "build_records", "parse_structure", "parse_target"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One usable crystal: ``target`` in the dataset's units, ``text`` None when it must be generated."""

    jid: str
    atoms: Atoms
    target: float
    text: str | None = None


@dataclass
class RecordReport:
    """How many entries were read, kept, dropped (no target) and skipped (unusable structure), and which."""

    total: int = 0
    dropped_target: list[str] = field(default_factory=list)
    skipped_structure: dict[str, str] = field(default_factory=dict)
    repeated_id: list[str] = field(default_factory=list)  # later entries of an id already read: dropped
    same_structure: list[list[str]] = field(default_factory=list)  # ids of one structure (each kept, in one split)
    kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped_target": len(self.dropped_target),
            "skipped_structure": len(self.skipped_structure),
            "repeated_id": len(self.repeated_id),
            "same_structure": sum(len(ids) for ids in self.same_structure),
            "dropped_target_ids": self.dropped_target,
            "skipped_structure_ids": self.skipped_structure,
            "repeated_id_ids": self.repeated_id,
            "same_structure_ids": self.same_structure,
        }


def parse_target(value: Any) -> float | None:
    """A finite float, or None for ``"na"``, empty, non-numeric or non-finite values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_structure(structure: dict[str, Any] | Path) -> Atoms:
    """A jarvis ``Atoms`` from a record's dict or a POSCAR/CIF file; raises ValueError saying what is wrong."""
    if isinstance(structure, Path):
        if not structure.is_file():
            raise ValueError(f"structure file {structure} does not exist")
        atoms = Atoms.from_cif(str(structure)) if structure.suffix.lower() == ".cif" else Atoms.from_poscar(str(structure))
    elif isinstance(structure, dict):
        atoms = Atoms.from_dict(structure)
    else:
        raise ValueError(f"structure is {type(structure).__name__}, expected an atoms dict")
    lattice = np.asarray(atoms.lattice_mat, dtype=float)
    coords = np.asarray(atoms.cart_coords, dtype=float)
    if atoms.num_atoms < 1:
        raise ValueError("structure has no atoms")
    if lattice.shape != (3, 3) or not np.isfinite(lattice).all() or abs(np.linalg.det(lattice)) < 1e-6:
        raise ValueError("lattice is not a finite, non-singular 3x3 matrix")
    if coords.shape != (atoms.num_atoms, 3) or not np.isfinite(coords).all():
        raise ValueError("coordinates are missing or not finite")
    return atoms


def build_records(source: Source, entries: list[RawEntry], max_structures: int = 0) -> tuple[list[Record], RecordReport]:
    """Parse and filter; raises DataError when nothing usable remains, saying why. An id seen before is a repeat:
    the first entry of each id is kept and later ones are dropped (counted in ``repeated_id``), in every format."""
    report = RecordReport(total=len(entries))
    records: list[Record] = []
    seen: set[str] = set()
    for entry in entries:
        if max_structures and len(records) >= max_structures:
            break
        if entry.jid in seen:
            report.repeated_id.append(entry.jid)
            continue
        seen.add(entry.jid)
        target = parse_target(entry.target)
        if target is None:
            report.dropped_target.append(entry.jid)
            continue
        try:
            atoms = parse_structure(entry.structure)
        except Exception as err:  # jarvis raises many types on corrupt input; each is recorded by id
            report.skipped_structure[entry.jid] = f"{type(err).__name__}: {err}"[:200]
            continue
        text = entry.text.strip() if isinstance(entry.text, str) and entry.text.strip() else None
        records.append(Record(entry.jid, atoms, target, text))
    report.kept = len(records)
    if report.skipped_structure:
        log.warning("skipped %d unparsable structure(s): %s", len(report.skipped_structure),
                    ", ".join(list(report.skipped_structure)[:20]))
    if report.repeated_id:
        log.warning("%s: dropped %d repeated entr%s of an id already read (the first is kept): %s", source.path,
                    len(report.repeated_id), "y" if len(report.repeated_id) == 1 else "ies",
                    ", ".join(list(dict.fromkeys(report.repeated_id))[:20]))
    if not records:
        raise DataError(
            f"no usable records in {source.path}: {report.total} read, {len(report.dropped_target)} without a finite "
            f"target value ('na' or empty), {len(report.skipped_structure)} with a structure that cannot be parsed; "
            "pick a target that has values (see the dataset's README) or fix the structures"
        )
    return records, report

