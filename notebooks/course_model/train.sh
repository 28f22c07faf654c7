#!/usr/bin/env bash
# Reproduces the course model that notebooks 07 and 09 load: DenseFlowConfig.small() (486,056
# parameters) trained on the built-in `photos` patches with the quickstart preset run longer
# (16 epochs of 147 steps instead of 4), then its test bits/dim — the single-sample bound and the
# importance-weighted bound with k=50 — on the whole photos test split, and the weights alone
# (no optimizer state) written next to this script.
#
# Run from the repository root:  bash notebooks/course_model/train.sh
# On a 2-core CPU shared with other work the training took 33 minutes of wall time (about 20 on an idle
# core), the evaluation about 6 more. README.md beside this script records the results.
set -euo pipefail
# One thread: on a shared CPU, a second OpenMP thread mostly waits for a core, which slows every step.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PYTHON:-python}
RUN=${RUN_DIR:-runs/course-model}
HERE=notebooks/course_model

"$PY" -m densflow train --preset quickstart --dataset photos --model small \
    --epochs 16 --warmup-steps 200 --checkpoint-every 200 --log-every 25 \
    --eval-every 0 --eval-limit 256 --seed 0 --device cpu --out-dir "$RUN"

# Weights only (densflow.io.save_model): a small file the notebooks load with densflow.io.load.
"$PY" - "$RUN/checkpoint.pt" "$HERE/small_photos.pt" <<'PYEOF'
import sys

from densflow.io import load, save_model

model = load(sys.argv[1])
save_model(model, sys.argv[2])
print(f"wrote {sys.argv[2]}: {sum(p.numel() for p in model.parameters()):,} parameters")
PYEOF

# Test bits/dim of the shipped weights on all 532 test patches (seeded noise draws).
"$PY" -m densflow eval "$HERE/small_photos.pt" --dataset photos --device cpu \
    --iw-samples 50 --chunk-size 50 --batch-size 16 --seed 0 --out "$HERE/test_bpd.json"
