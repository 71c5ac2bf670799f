"""Every command the README names answers ``--help`` with exit status 0 (help texts derived from the config are
%-formats to argparse: a ``%`` in one must not break it)."""

from __future__ import annotations

import re
import runpy
import sys

import pytest

from tests.helpers import REPO

# (how the README writes it, how to run it in this process)
ENTRY_POINTS = {
    "python run_search.py": ("path", "run_search.py", []),
    "python analyze_trials.py": ("path", "analyze_trials.py", []),
    "python -m tune_fusion.train": ("module", "tune_fusion.train", []),
    "python -m tune_fusion.data prepare": ("module", "tune_fusion.data", ["prepare"]),
    **{f"python benchmarks/{p.name}": ("path", f"benchmarks/{p.name}", []) for p in REPO.glob("benchmarks/*.py")},
}


def test_the_list_holds_every_command_the_readme_names():
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"python (?:-m tune_fusion\.\w+(?: prepare)?|[\w/]+\.py)", readme))
    assert named <= set(ENTRY_POINTS), named - set(ENTRY_POINTS)


@pytest.mark.parametrize("command", sorted(ENTRY_POINTS))
def test_help_exits_0(command, monkeypatch, capsys):
    kind, target, before = ENTRY_POINTS[command]
    monkeypatch.setattr(sys, "argv", [target, *before, "--help"])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stopped:
        if kind == "path":
            runpy.run_path(str(REPO / target), run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
