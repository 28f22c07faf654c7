#!/usr/bin/env bash
# Everything issue 7 still wants measured on a GPU, in one unattended run, most valuable first:
#   1. the benchmark at the paper config, 32×32 batch 64: eager float32 against the CUDA-graph
#      step (GraphedTrainingStep) in float32 and with channels_last + bf16 (training images/s,
#      and the importance-weighted bound at the paper's chunk of 50 samples per image per pass,
#      which sets the time of the k = 1000 CIFAR-10 evaluation);
#   2. a short real training run of DenseFlow-74-10 through the Trainer (photos, 32×32, batch 64,
#      bf16, channels_last, CUDA graphs), and beside it the CUDA tests (tests/test_cuda.py): they
#      spend most of their time compiling on the CPU, which the training run leaves idle;
#   3. the same benchmark at 64×64 batch 32;
#   4. the 32×32 benchmark with the compiled variant (most of its time is compiling the paper model);
#   5. a longer training run with --compile.
# Usage: [BUDGET=SECONDS] bash benchmarks/gpu_check.sh [OUT_DIR]   (PYTHON=... for the interpreter)
# Each part has its own time limit and a failed part does not stop the others. With BUDGET, the
# whole run ends within BUDGET seconds: each part's limit is cut to what is left, and parts that
# would get under a minute are skipped (a GPU lent for 15 minutes: BUDGET=540 got parts 1-3 on an
# H200 on 2026-11-30).
# The logs, the benchmark JSON and the training metrics land in OUT_DIR (default: gpu_check/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
deadline=$((SECONDS + ${BUDGET:-1000000}))
status=0

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, remember failures
    local name=$1 limit=$2 left=$((deadline - SECONDS))
    shift 2
    if [ "$left" -lt 60 ]; then
        echo "== $name: skipped, ${left}s of the budget left =="
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $name (limit ${limit}s) =="
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc$([ "$rc" -eq 124 ] && echo ", stopped at its limit") =="
    [ "$rc" -eq 0 ] || status=1
    return "$rc"
}

"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__)" | tee "$out/device.txt" || exit 1

short=(--repeats 1 --steps 10 --eval-iters 2)  # one round each: a GPU loan is short
graphs=eager,graph,graph+channels_last+bf16  # graph: GraphedTrainingStep, the eager step replayed
paper32=(benchmarks/benchmark.py --preset paper --image-size 32 --batch-size 64 "${short[@]}"
         --eval-batch 16 --iw-samples 100 --iw-chunk 50)
part benchmark_paper32 360 "$py" "${paper32[@]}" --variants "$graphs" \
    --json "$out/benchmark_paper32.json"
# In a subshell: its lines go to a file, shown after the wait, and its failure is counted there.
part cuda_tests 600 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    >"$out/cuda_tests.console" &
cuda_tests=$!
part train_paper 300 "$py" -m densflow train --dataset photos --model paper --image-size 32 \
    --batch-size 64 --epochs 10 --max-steps 300 --warmup-steps 50 --log-every 50 --eval-every 0 \
    --amp bf16 --channels-last --cuda-graphs --no-progress --out-dir "$out/train_paper"
wait "$cuda_tests"
rc=$?
grep -E "^== |passed|failed|error" "$out/cuda_tests.console"
[ "$rc" -eq 0 ] || status=1
part benchmark_paper64 600 "$py" benchmarks/benchmark.py --preset paper --image-size 64 \
    --batch-size 32 "${short[@]}" --variants "$graphs" --json "$out/benchmark_paper64.json"
part benchmark_paper32_compiled 1500 "$py" "${paper32[@]}" \
    --variants eager,compile+channels_last+bf16 --json "$out/benchmark_paper32_compiled.json"
part train_paper_compiled 900 "$py" -m densflow train --dataset photos --model paper \
    --image-size 32 --batch-size 64 --epochs 10 --max-steps 300 --log-every 50 --eval-every 0 \
    --compile --amp bf16 --channels-last --no-progress --out-dir "$out/train_paper_compiled"
exit $status
