#!/usr/bin/env bash
# What the GPU figures of docs/performance.md need, in one unattended run, most valuable first:
#   1. the benchmark at the paper config, 32×32 batch 64: the eager float32 path against the
#      CUDA-graphed one (the Trainer's GraphedStep: forward, backward and update replayed;
#      GraphedFlow: the IW evaluation and sampling passes replayed) in float32 and with
#      channels_last + bf16: training images/s, IW evaluation image·samples/s (the paper's 50
#      samples per image per pass), sampling images/s, and the peak memory of each;
#   2. a real training run of DenseFlow-74-10 through the Trainer (photos, 32×32, batch 64,
#      bf16, channels_last, CUDA graphs, a checkpoint at each of its epoch ends), to set against
#      the benchmark's row of the same switches;
#   3. the IW evaluation of that run's checkpoint through the CLI, graphed (k = 1000, chunks
#      of 50);
#   4. the CUDA tests (marked cuda: tests/test_cuda.py and the few beside the code they test);
#   5. the stall of a paper-size checkpoint: the synchronous write against the background
#      writer's copy to pinned memory, and the steps beside a write;
#   6. the same benchmark at 64×64 batch 32;
#   7. the 32×32 benchmark with the compiled variant (most of its time is compiling);
#   8. a training run with --compile.
# Then benchmarks/gpu_summary.py turns what the parts left into OUT_DIR/summary.md.
# Usage: [BUDGET=SECONDS] bash benchmarks/gpu_check.sh [OUT_DIR]   (PYTHON=... for the interpreter)
# Each part has its own time limit and a failed part does not stop the others. With BUDGET, the
# whole run ends within BUDGET seconds: each part's limit is cut to what is left, and parts that
# would get under a minute are skipped (BUDGET=540 fits a 15-minute loan with its start-up).
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
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "$((SECONDS - start))" >"$out/$name.seconds"
    echo "== $name: exit $rc$([ "$rc" -eq 124 ] && echo ", stopped at its limit") =="
    [ "$rc" -eq 0 ] || status=1
    return "$rc"
}

"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__)" | tee "$out/device.txt" || exit 1

short=(--repeats 1 --steps 10 --eval-iters 2)  # one round each: a GPU loan is short
graphs=eager,graph,graph+channels_last+bf16
paper32=(benchmarks/benchmark.py --preset paper --image-size 32 --batch-size 64 "${short[@]}"
         --eval-batch 16 --iw-samples 100 --iw-chunk 50)
train=(-m densflow train --dataset photos --model denseflow-74-10 --image-size 32 --batch-size 64
       --epochs 10 --warmup-steps 50 --log-every 10 --eval-every 0 --amp bf16 --channels-last
       --no-progress)
part benchmark_paper32 240 "$py" "${paper32[@]}" --variants "$graphs" \
    --json "$out/benchmark_paper32.json"
part train_paper 200 "$py" "${train[@]}" --max-steps 300 --cuda-graphs \
    --out-dir "$out/train_paper"
part eval_iw 120 "$py" -m densflow eval "$out/train_paper/checkpoint.pt" --dataset photos \
    --limit 64 --batch-size 16 --iw-samples 1000 --chunk-size 50 --amp bf16 --cuda-graphs \
    --no-progress --out "$out/eval_iw.json"
part cuda_tests 420 "$py" -m pytest -q -p no:cacheprovider -m cuda tests
part checkpoint_stall 150 "$py" benchmarks/checkpoint_stall.py --preset paper --device cuda \
    --rounds 3 --steps 5 --batch-size 64 --json "$out/checkpoint_stall.json"
part benchmark_paper64 300 "$py" benchmarks/benchmark.py --preset paper --image-size 64 \
    --batch-size 32 "${short[@]}" --variants "$graphs" --json "$out/benchmark_paper64.json"
part benchmark_paper32_compiled 1500 "$py" "${paper32[@]}" \
    --variants eager,compile+channels_last+bf16 --json "$out/benchmark_paper32_compiled.json"
part train_paper_compiled 900 "$py" "${train[@]}" --max-steps 300 --compile \
    --out-dir "$out/train_paper_compiled"
"$py" benchmarks/gpu_summary.py "$out" || status=1
exit $status
