#!/usr/bin/env bash
# Everything issue 7 still wants measured on a GPU, in one unattended run (about 10-15 minutes on
# an H100-class GPU, most of it compiling the paper model):
#   1. the CUDA tests (tests/test_cuda.py);
#   2. the benchmark at the paper config, eager float32 against each speed switch;
#   3. the importance-weighted evaluation at the paper's chunk size (50 samples per image per pass),
#      which is what sets the time of the k = 1000 CIFAR-10 evaluation;
#   4. a short real training run of DenseFlow-74-10 through the Trainer (photos, 32×32, batch 64).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (PYTHON=... to choose the interpreter)
# Each part has its own time limit and a failed part does not stop the others; the logs, the
# benchmark JSON and the training metrics land in OUT_DIR (default: gpu_check/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, remember failures
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s) =="
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc =="
    [ "$rc" -eq 0 ] || status=1
}

"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__)" | tee "$out/device.txt" || exit 1

part cuda_tests 600 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
part benchmark_paper 1500 "$py" benchmarks/benchmark.py --paper --repeats 1 --steps 10 \
    --variants eager,channels_last,bf16,channels_last+bf16,compile+channels_last+bf16 \
    --json "$out/benchmark_paper.json"
part benchmark_iw 900 "$py" benchmarks/benchmark.py --paper --repeats 1 --steps 3 \
    --eval-batch 16 --iw-samples 100 --iw-chunk 50 --variants eager,channels_last+bf16 \
    --json "$out/benchmark_iw.json"
part train_paper 900 "$py" -m densflow train --dataset photos --model paper --image-size 32 \
    --batch-size 64 --epochs 10 --max-steps 300 \
    --log-every 50 --eval-every 0 --compile --amp bf16 --channels-last --no-progress \
    --out-dir "$out/train_paper"
exit $status
