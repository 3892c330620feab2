#!/usr/bin/env bash
# Every GPU measurement in one run, on a machine with an NVIDIA GPU, no Rust toolchain
# and no network. Builds nothing there.
#
# wgpu reaches the GPU through Vulkan, set up by scripts/gpu-env.sh: the Vulkan loader,
# which such a machine may not have installed, comes along as Debian's libvulkan.so.1 in
# devrun/ on LD_LIBRARY_PATH; and the NVIDIA driver is named by a manifest pointing at its
# EGL library, selected with VK_DRIVER_FILES, because the stock manifest points at the GLX
# library, which fails without a display. (wgpu's GL backend does not work there.) Both
# machines are x86-64 and the binaries need only glibc and the loader they open at run
# time, so what is built here runs there.
#
# Prepare here (scripts/prepare-gpu-run.sh does it): devrun/ holds the release binary
# `unfold`, the test executables, the criterion bench executable, Debian's
# libvulkan.so.1, torch_rnn_bench.py and torch_matmul_bench.py.
# Then run this script there with devrun/ carried. The comparison with cuDNN runs first
# and its table is printed as soon as it is known; later sections (kernel detail,
# correctness, a short training run) are skipped once BUDGET seconds are spent, so a
# short lease still brings the main numbers back. Everything is logged to $OUT/log.txt;
# $OUT gets at most 8 files (the device tool's limit).
set -u
cd "$(dirname "$0")/.."
RUN=$PWD/devrun
OUT=${OUT:-/tmp/unfold-out}
BUDGET=${BUDGET:-420}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
source scripts/gpu-env.sh

# section NAME SECONDS: true when about SECONDS more still fit in the budget
section() {
    if (( SECONDS + $2 > BUDGET )); then
        echo "--- skipped (budget, ${SECONDS}s spent): $1"
        return 1
    fi
    echo "--- [${SECONDS}s] $1"
}
tables() {
    python3 scripts/compare_bench.py "$OUT/unfold_gpu.jsonl" "$OUT/torch_cuda.jsonl" \
        "$OUT/unfold_matmul.jsonl" "$OUT/torch_matmul.jsonl" "$OUT/time_loops.jsonl" > "$OUT/table.md"
    cat "$OUT/table.md"
}
touch "$OUT"/{unfold_gpu,torch_cuda,unfold_matmul,torch_matmul,time_loops}.jsonl

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
"$RUN/unfold" devices 2>&1

# each cell in turn (CELLS, default every kind: Elman, LSTM, GRU), unfold then cuDNN
for cell in ${CELLS:-tanh lstm gru}; do
    section "unfold training steps on the GPU, $cell" 40 &&
        timeout 150 "$RUN/unfold" bench --device gpu --cell "$cell" --configs "${CONFIGS:-latency,small,ref,large}" --reps 20 | tee -a "$OUT/unfold_gpu.jsonl"
    section "PyTorch / cuDNN on the same GPU, $cell" 30 &&
        timeout 150 python3 "$RUN/torch_rnn_bench.py" cuda --cell "$cell" | tee -a "$OUT/torch_cuda.jsonl"
done
tables
# mixed precision (part 2 of the GPU issue): its first run on tensor cores, so correctness first
MIXED_SHAPES=4096x4096x4096,16384x1024x512,1024x1024x16384,256x1024x1024,256x4096x1024
section "mixed precision (cooperative matrices: f16 operands, f32 accumulation): tests, products against torch.mm in fp16 and TF32, ref and large against cuDNN with TF32" 50 && {
    echo "mixed_precision: $(UNFOLD_REQUIRE_COOP=1 timeout 60 "$RUN/tests/it" mixed_precision:: --test-threads=1 2>&1 | grep -E '^test result|panicked' | head -3)"
    timeout 60 "$RUN/unfold" bench --device gpu --mixed-precision --matmul "$MIXED_SHAPES" --reps 20 | tee -a "$OUT/unfold_matmul.jsonl"
    for mode in --fp16 --tf32; do
        timeout 60 python3 "$RUN/torch_matmul_bench.py" "$MIXED_SHAPES" 20 $mode
    done | tee -a "$OUT/torch_matmul.jsonl"
    for cell in tanh lstm; do
        timeout 90 "$RUN/unfold" bench --device gpu --mixed-precision --cell "$cell" --configs ref,large --reps 20
    done | tee -a "$OUT/time_loops.jsonl"
    tables
}
# the profile first of the rest: where large loses is what the GPU work needs to know
section "where a step's GPU time goes (a timestamp per dispatch): ref and large, Elman and LSTM" 40 &&
    for cell in tanh lstm; do
        timeout 90 "$RUN/unfold" bench --device gpu --cell "$cell" --configs ref,large --reps 3 --profile
    done | tee -a "$OUT/time_loops.jsonl"
section "bidirectional LSTM (small, ref), unfold then cuDNN" 40 && {
    timeout 90 "$RUN/unfold" bench --device gpu --cell lstm --bidirectional --configs small,ref --reps 20 | tee -a "$OUT/unfold_gpu.jsonl"
    for cfg in small ref; do
        timeout 60 python3 "$RUN/torch_rnn_bench.py" cuda "$cfg" --cell lstm --bidirectional | tee -a "$OUT/torch_cuda.jsonl"
    done
    tables
}

SHAPES=${SHAPES:-4096x4096x4096,2048x2048x2048,1024x1024x1024,16384x1024x512,1024x1024x16384,1024x512x16384,512x512x6400,256x1024x1024,64x512x512}
section "matrix products alone: unfold's tilings, then torch.mm (TF32 off)" 40 && {
    timeout 90 "$RUN/unfold" bench --device gpu --matmul "$SHAPES" --reps 20 | tee -a "$OUT/unfold_matmul.jsonl"
    timeout 60 python3 "$RUN/torch_matmul_bench.py" "$SHAPES" | tee -a "$OUT/torch_matmul.jsonl"
}
section "time loops for hidden > 256 (ref, large): a fused dispatch per step against tiled steps" 30 &&
    for loop in per-step tiled-steps; do
        timeout 60 "$RUN/unfold" bench --device gpu --configs ref,large --reps 10 --time-loop "$loop"
    done | tee -a "$OUT/time_loops.jsonl"
section "ref and large with every step uploading its batch (the tables above reuse one, as PyTorch's benchmark does)" 20 &&
    timeout 60 "$RUN/unfold" bench --device gpu --configs ref,large --reps 10 --upload-each-step | tee -a "$OUT/time_loops.jsonl"
section "after autotuning (Rnn::autotune, 2 s per product shape): ref and large, Elman and LSTM, with the tuned step's profile" 50 &&
    for cell in tanh lstm; do
        timeout 120 "$RUN/unfold" bench --device gpu --cell "$cell" --configs ref,large --reps 10 --autotune 2 --profile
    done | tee -a "$OUT/time_loops.jsonl"
tables

section "one dependent time step on the GPU (criterion; µs per step = 1 / throughput)" 60 &&
    timeout 120 "$RUN/train_step_bench" --bench 'time_step/h[0-9]+/gpu' 2>&1 | grep -E "^time_step|time:|thrpt:"

section "correctness on this GPU (golden PyTorch values, GPU vs CPU parity)" 60 &&
    for m in golden gpu_parity; do
        echo "$m: $(timeout 120 "$RUN/tests/it" "$m::" --test-threads=4 2>&1 | grep -E '^test result|panicked' | head -3)"
    done
section "unfold verify: CPU path against this GPU, step by step" 40 && {
    timeout 60 "$RUN/unfold" verify --config all 2>&1 | tail -4
    for loop in per-step tiled-steps; do
        timeout 30 "$RUN/unfold" verify --config small,wide --time-loop "$loop" 2>&1 | tail -1
    done
}
section "unfold classify on the bundled JapaneseVowels, on this GPU" 40 &&
    ( time timeout 90 "$RUN/unfold" classify --device gpu ) 2>&1 | grep -E "test accuracy|real"
section "unfold train (char-level LM on the bundled text) for half a minute on this GPU, then sample" 45 && {
    timeout 60 "$RUN/unfold" train --device gpu --minutes 0.5 --out /tmp/unfold-charlm 2>&1 | tr '\r' '\n' | grep -E "held-out|done:" | tail -3
    timeout 20 "$RUN/unfold" sample --checkpoint /tmp/unfold-charlm --device gpu --prime "Anne" --len 200 --seed 1 2>&1 | tail -3
}
section "scaling curves: step time against T and B·H², memory against T, unfold and cuDNN" 150 && {
    timeout 300 python3 "$RUN/scaling.py" --unfold "$RUN/unfold" --python python3 --device gpu \
        --cell "${SCALING_CELL:-tanh}" --hiddens 256,512,1024 --reps 10 --timeout 60 \
        --out "$OUT/scaling" 2>&1 | grep -v "^  "
    # the rows alone come back (8 files at most): `scaling.py --plot-only` redraws here
    mv "$OUT/scaling/scaling.jsonl" "$OUT/" 2>/dev/null
    rm -rf "$OUT/scaling"
}
echo "--- [${SECONDS}s] done"
