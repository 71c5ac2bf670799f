"""Units of the JARVIS-DFT (dft_3d) targets, so every number with a unit shows it."""

from __future__ import annotations

__all__ = ["TARGET_UNITS", "UNKNOWN", "axis_label", "unit", "with_unit"]

# dft_3d key -> unit (from the JARVIS-DFT documentation; energies per atom are eV/atom)
TARGET_UNITS = {
    "formation_energy_peratom": "eV/atom",
    "optb88vdw_total_energy": "eV/atom",
    "ehull": "eV/atom",
    "exfoliation_energy": "meV/atom",
    "optb88vdw_bandgap": "eV",
    "mbj_bandgap": "eV",
    "hse_gap": "eV",
    "bulk_modulus_kv": "GPa",
    "shear_modulus_gv": "GPa",
    "max_efg": "V/m²",
    "avg_elec_mass": "mₑ",
    "avg_hole_mass": "mₑ",
    "n-Seebeck": "μV/K",
    "p-Seebeck": "μV/K",
    "n-powerfact": "μW/(mK²)",
    "p-powerfact": "μW/(mK²)",
    "ncond": "(Ωm)⁻¹",
    "pcond": "(Ωm)⁻¹",
    "nkappa": "W/(mK)",
    "pkappa": "W/(mK)",
    "magmom_oszicar": "μB",
    "magmom_outcar": "μB",
    "kpoint_length_unit": "Å",
    "encut": "eV",
    "slme": "%",
    "spillage": "",
    "epsx": "",
    "epsy": "",
    "epsz": "",
    "mepsx": "",
    "mepsy": "",
    "mepsz": "",
    "dfpt_piezo_max_dielectric": "",
    "dfpt_piezo_max_dij": "pC/N",
    "dfpt_piezo_max_eij": "C/m²",
}
UNKNOWN = "target units"


def unit(target: str) -> str:
    """The unit of ``target`` ("" for a dimensionless one, "target units" for a target this table does not know)."""
    return TARGET_UNITS.get(target, UNKNOWN)


def with_unit(value: float | None, target: str, digits: int = 4) -> str:
    """``0.3021 eV/atom``; a dimensionless target gets no unit; None gives "n/a"."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return f"{text} {unit(target)}".rstrip()


def axis_label(quantity: str, target: str) -> str:
    """``validation MAE (eV/atom)``, or the quantity alone for a dimensionless target."""
    found = unit(target)
    return f"{quantity} ({found})" if found else quantity
