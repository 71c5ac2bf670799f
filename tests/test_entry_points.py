"""Every command the README names answers ``--help`` with exit status 0 (help texts derived from the config are
%-formats to argparse: a ``%`` in one must not break it)."""

from __future__ import annotations

import re
import runpy
import subprocess
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


# the original research scripts, which the README maps to ours
ORIGINAL = {f"python {name}.py" for name in ("train_with_cross_modal_attention", "monitor_text_scale",
                                             "diagnose_fusion_effectiveness", "1.extract_alpha_final",
                                             "2.create_paper_alpha_figures", "compare_fusion_models",
                                             "scale_checkpoint_weights")}


def test_the_list_holds_every_command_the_readme_names():
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"python (?:-m tune_fusion\.\w+(?: prepare)?|[\w/.]+\.py)", readme))
    assert {"python run_search.py", "python -m tune_fusion.train"} <= named
    assert named - ORIGINAL <= set(ENTRY_POINTS), named - ORIGINAL - set(ENTRY_POINTS)


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


QUIET = """
import logging
from tune_fusion.cli import console_warnings_only, run

def main(argv):
    logging.getLogger("sentence_transformers.base.model").info("Loading SentenceTransformer model")
    logging.getLogger("tune_fusion.data.cache").info("prepared the cache")
    if argv:
        console_warnings_only()
        logging.getLogger("tune_fusion.search").info("prepared data")
        logging.getLogger("tune_fusion.search").warning("a warning")

run(main, __import__("sys").argv[1:])
"""


def test_the_console_shows_only_this_librarys_info_lines_and_a_quiet_one_none():
    loud = subprocess.run([sys.executable, "-c", QUIET], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert loud.returncode == 0, loud.stderr
    assert "prepared the cache" in loud.stderr and "SentenceTransformer" not in loud.stderr
    quiet = subprocess.run([sys.executable, "-c", QUIET, "quiet"], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
    assert "prepared data" not in quiet.stderr and "WARNING tune_fusion.search: a warning" in quiet.stderr
