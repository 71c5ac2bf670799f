"""What a newcomer sees: the quiet console of run_search.py with its summary (counts, units, the mean predictor, what
to run next), and plots whose axes, legends and captions say what they show (read back from the figure objects)."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.markers import MarkerStyle
from matplotlib.text import Text

from tests.helpers import REPO, write_space
from tune_fusion import plots
from tune_fusion.experiment import open_study, status_counts
from tune_fusion.names import DRIVER_LOG, STUDY_FILE, Status
from tune_fusion.units import axis_label, unit, with_unit


def trial(trial_id: str, status: Status, maes: list[float], **params) -> SimpleNamespace:
    history = [{"epoch": i + 1, "training_iteration": i + 1, "val_mae": m, "text_scale/layer_0": 1.0 + 0.1 * i} for i, m in
               enumerate(maes)]
    return SimpleNamespace(trial_id=trial_id, status=status, params=params, history=history,
                           best_val_mae=min(maes))


TRIALS = [trial("aaaa1111", Status.COMPLETED, [0.5, 0.4, 0.3], learning_rate=1e-3, use_cross_modal=True),
          trial("bbbb2222", Status.STOPPED_BY_SCHEDULER, [0.6], learning_rate=4e-3, use_cross_modal=False),
          trial("cccc3333", Status.DIVERGED, [0.7, float("nan")], learning_rate=3e-2, use_cross_modal=True)]


def test_units_of_the_dft3d_targets():
    assert unit("formation_energy_peratom") == "eV/atom" and unit("optb88vdw_bandgap") == "eV"
    assert unit("bulk_modulus_kv") == "GPa" and unit("my_property") == "target units"
    assert with_unit(0.30214, "formation_energy_peratom") == "0.3021 eV/atom" and with_unit(2.0, "epsx") == "2.0000"
    assert axis_label("validation MAE", "ehull") == "validation MAE (eV/atom)"


def test_summary_counts_every_way_a_trial_ends():
    assert status_counts(TRIALS) == "1 completed, 1 stopped early by the scheduler, 1 diverged, 0 errored"


def test_learning_curves_say_their_unit_and_which_trial_is_which():
    fig = plots.learning_curves(TRIALS, "formation_energy_peratom")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "validation MAE (eV/atom)" and ax.get_xlabel() == "epoch"
    assert {t.get_text() for t in ax.texts} >= {"aaaa1111", "bbbb2222"}  # each line carries its trial id
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["completed", "stopped by scheduler", "diverged"]


def test_parameters_use_log_axes_for_log_uniform_ones_and_explain_their_colours():
    space = {"learning_rate": {"type": "loguniform"}, "use_cross_modal": {"type": "choice", "values": [True, False]}}
    fig = plots.params_vs_metric(TRIALS, ["learning_rate", "use_cross_modal"], "optb88vdw_bandgap", space)
    lr, cross = fig.axes[:2]
    assert lr.get_xscale() == "log" and lr.get_xlabel() == "learning_rate (log scale)"
    assert lr.get_ylabel() == "best validation MAE (eV)"
    assert [t.get_text() for t in cross.get_xticklabels()] == ["true", "false"]
    assert lr.get_legend().get_title().get_text() == "trial ended"
    linear = plots.params_vs_metric(TRIALS, ["learning_rate"], "ehull", {"learning_rate": {"type": "uniform"}})
    assert linear.axes[0].get_xscale() == "linear"


def test_parity_names_the_property_unit_and_mae():
    fig = plots.parity(np.array([-1.0, 0.0, 1.0]), np.array([-0.5, 0.0, 1.5]), "formation_energy_peratom", "test")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "DFT formation_energy_peratom (eV/atom)"
    assert ax.get_ylabel() == "predicted formation_energy_peratom (eV/atom)"
    assert "MAE 0.3333 eV/atom" in ax.get_legend().get_texts()[0].get_text()


def test_labels_of_trials_ending_close_together_do_not_overlap():
    close = [trial(f"{i}{i}{i}{i}eeee", Status.COMPLETED, [0.5, 0.4, 0.3 + 0.0005 * i]) for i in range(6)]
    fig = plots.learning_curves(close + TRIALS[:1], "formation_energy_peratom")
    ax = fig.axes[0]
    fig.canvas.draw()
    boxes = sorted((Text.get_window_extent(t) for t in ax.texts), key=lambda b: b.y0)  # the text, not its leader
    assert len(boxes) == 7
    assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:])), [(b.y0, b.y1) for b in boxes]


def test_a_big_search_labels_its_best_trials_without_squashing_the_curves():
    many = [trial(f"{i:04d}ffff", Status.COMPLETED, [0.5, 0.4, 0.3 + 0.0001 * i]) for i in range(40)]
    ax = plots.learning_curves(many, "formation_energy_peratom").axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels == [f"{i:04d}ffff" for i in range(15)] and "the 15 best" in ax.get_title()
    low, high = ax.get_ylim()
    assert high - low < 0.2 * 1.6  # the curves span 0.2: the labels' stack adds well under their own height


def test_scatter_markers_are_the_legends_markers():
    space = {"learning_rate": {"type": "loguniform"}, "use_cross_modal": {"type": "choice", "values": [True, False]}}
    fig = plots.params_vs_metric(TRIALS, ["learning_rate", "use_cross_modal"], "optb88vdw_bandgap", space)
    legend = {h.get_label(): h.get_marker() for h in fig.axes[0].get_legend().legend_handles}
    for ax in fig.axes[:2]:
        drawn = {c.get_label(): c.get_paths()[0] for c in ax.collections}
        assert set(drawn) == set(legend) == {"completed", "stopped by scheduler", "diverged"}
        for label, path in drawn.items():
            style = MarkerStyle(legend[label])
            expected = style.get_path().transformed(style.get_transform())
            assert np.allclose(path.vertices, expected.vertices), label  # an "x" in the legend is an "x" drawn


def test_a_standalone_runs_text_scale_reads_absolute_values_and_names_no_trial():
    run = trial("formation_energy_peratom", Status.COMPLETED, [0.5, 0.4, 0.3])
    for i, row in enumerate(run.history):
        del row["text_scale/layer_0"]
        row["text_scale/layer_2"] = 12.0 + 0.0004 * i  # a learned scale that barely moved
    fig = plots.text_scale_curves([run], run="fusion_improved/formation_energy_peratom")
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [float(t.get_text().replace("−", "-")) for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and all(11.99 < v < 12.01 for v in ticks), ticks  # not 0.0002 above an offset of +1.2e1
    assert ax.yaxis.get_offset_text().get_text() == ""
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["layer_2"] and "trial" not in ax.get_title() + ax.get_legend().get_title().get_text()
    curves = plots.learning_curves([run], "formation_energy_peratom", run="fusion_improved/formation_energy_peratom")
    assert not curves.axes[0].texts and "1 trials" not in curves.axes[0].get_title()


def test_the_ablation_legend_covers_no_bar():
    rows = [{"model": "best", "condition": c, "val_mae": v, "spread": spread, "runs": runs}
            for c, v, spread, runs in (("own", 0.30, 0.0, 1), ("shuffled", 0.40, 0.01, 5), ("none", 0.38, 0.0, 1))]
    fig = plots.text_ablation_bars(rows, "formation_energy_peratom", "what the text is worth")
    ax = fig.axes[0]
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert ax.patches and not any(legend.overlaps(bar.get_window_extent()) for bar in ax.patches)
    assert fig.get_supxlabel().startswith("error bars: standard deviation of the validation MAE over the 5 shuffles")


def test_text_scale_is_drawn_only_when_it_moved():
    assert plots.text_scale_curves(TRIALS[:1]).axes[0].get_ylabel().startswith("text_scale")
    fixed = trial("dddd4444", Status.COMPLETED, [0.5, 0.4])
    for row in fixed.history:
        row["text_scale/layer_0"] = 12.0
    assert plots.text_scale_curves([fixed]) is None


def test_fusion_and_alpha_figures_explain_their_terms():
    layer = {"text_scale": 2.0, "norm_ratio": 1.5, "cos_before": 0.1, "cos_after": 0.3, "relative_change": 0.2,
             "alpha": {"std": 0.05}}
    fig = plots.fusion_summary({"A": {"layers": {"layer_1": layer}}})
    assert "h_in: atom features entering" in fig.get_supxlabel()
    assert "‖h_in‖ / ‖u‖" in fig.axes[1].get_title()
    arrays = {"crystal_alpha_layer_1": np.array([0.4, 0.5, 0.52])}
    elements = {"layer_1": {"O": {"mean": 0.5, "std": 0.01}, "Si": {"mean": 0.48, "std": 0.02}}}
    (figure,) = plots.alpha_figures(arrays, elements, "best").values()
    bars = figure.axes[1]
    assert bars.get_ylim() == (0.0, 1.0)  # +-0.03 looks as small as it is
    assert [t.get_text() for t in bars.get_xticklabels()] == ["O", "Si"] and bars.get_xlabel().startswith("element")
    assert "error bars: std of alpha over the element's atoms" in bars.get_title()


@pytest.mark.slow
def test_the_quiet_console_is_short_and_ends_with_a_summary(tmp_path, cache_dir, prepared):
    space = write_space(tmp_path / "tiny.yaml", cache_dir, num_samples=3, epochs=2)
    out = subprocess.run([sys.executable, "run_search.py", "--space", str(space), "--storage", str(tmp_path / "r"),
                          "--num_samples", "2"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) < 80 and "Traceback" not in out.stdout + out.stderr
    assert len([line for line in lines if re.search(r"trial \w+ started", line)]) == 2  # the original flag's count
    assert len([line for line in lines if re.search(r"trial \w+ (completed|stopped|diverged)", line)]) == 2
    summary = "\n".join(lines[-9:])
    assert re.search(r"2 trials: \d completed, \d stopped early by the scheduler, 0 diverged, 0 errored \(data "
                     r"preparation \d+ min \d+ s, search \d+ min \d+ s\)", summary), summary
    assert re.search(r"best validation MAE: 0\.\d{4} eV/atom .*training mean scores 0\.\d{4} eV/atom", summary)
    assert "tensorboard --logdir" in summary and "python analyze_trials.py" in summary
    experiment = tmp_path / "r" / "tiny"
    assert f"       optuna-dashboard {experiment / STUDY_FILE}" in lines
    assert lines[1] == "fusion layers are 0-based ALIGNN block indices: this model has 2 blocks (0, 1)"
    assert "driver_artifacts" not in out.stdout and "WARNING" not in out.stdout
    assert "INFO" not in out.stderr, out.stderr[-2000:]  # library INFO lines go to the log file only
    assert "ExperimentalWarning" not in out.stderr
    assert lines[-1] == f"log:   {experiment / DRIVER_LOG}"
    assert "INFO tune_fusion.search: prepared data" in (experiment / DRIVER_LOG).read_text()
    study, _ = open_study(experiment)
    assert study.metric_names == ["val_mae (eV/atom)"]  # what optuna-dashboard names the objective
