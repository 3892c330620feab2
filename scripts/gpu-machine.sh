#!/usr/bin/env bash
# Every GPU measurement in one run, on a machine with an NVIDIA GPU, no Rust toolchain
# and no network (see GPU-MACHINE.md in the shared notes). Builds nothing there.
#
# Prepare here (scripts/prepare-gpu-run.sh does it): devrun/ holds the release binary
# `unfold`, the test executables, the criterion bench executable, Debian's
# libvulkan.so.1, torch_rnn_bench.py and torch_matmul_bench.py.
# Then run this script there with devrun/ carried; it prints one table last.
set -u
cd "$(dirname "$0")/.."
RUN=$PWD/devrun
OUT=${OUT:-/tmp/unfold-out}
mkdir -p "$OUT"
printf '{"file_format_version":"1.0.1","ICD":{"library_path":"/usr/local/nvidia/lib64/libEGL_nvidia.so.0","api_version":"1.4.312"}}' > /tmp/nv_icd.json
export VK_DRIVER_FILES=/tmp/nv_icd.json
export LD_LIBRARY_PATH=$RUN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export WGPU_BACKEND=vulkan
export UNFOLD_REQUIRE_GPU=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$RUN/unfold" devices 2>&1 | tee "$OUT/devices.txt"

echo "--- correctness on this GPU (golden PyTorch values, GPU vs CPU parity)"
for t in "$RUN"/tests/*; do
    echo "$(basename "$t"): $("$t" --test-threads=1 2>&1 | grep -E '^test result|panicked' | head -3)"
done | tee "$OUT/tests.txt"

echo "--- unfold verify: CPU path against this GPU, step by step"
timeout 120 "$RUN/unfold" verify --config all 2>&1 | tail -4 | tee "$OUT/verify.txt"
for loop in per-step tiled-steps; do
    timeout 60 "$RUN/unfold" verify --config small,wide --time-loop "$loop" 2>&1 | tail -1 | tee -a "$OUT/verify.txt"
done
echo "--- unfold classify on the bundled JapaneseVowels, on this GPU"
( time timeout 300 "$RUN/unfold" classify --device gpu ) 2>&1 | grep -E "test accuracy|real" | tee "$OUT/classify.txt"

echo "--- unfold train (char-level LM on the bundled text) for one minute on this GPU, then sample"
timeout 150 "$RUN/unfold" train --device gpu --minutes 1 --out /tmp/unfold-charlm 2>&1 | tr '\r' '\n' | grep -E "held-out|done:" | tail -4 | tee "$OUT/train.txt"
"$RUN/unfold" sample --checkpoint /tmp/unfold-charlm --device gpu --prime "Anne" --len 200 --seed 1 2>&1 | tail -3 | tee -a "$OUT/train.txt"

echo "--- one dependent time step (criterion; µs per step = 1 / throughput)"
timeout 180 "$RUN/train_step_bench" --bench time_step 2>&1 | grep -E "^time_step|time:|thrpt:" | tee "$OUT/time_step.txt"

SHAPES=${SHAPES:-4096x4096x4096,2048x2048x2048,1024x1024x1024,64x512x512,6400x512x128,512x512x6400,16384x1024x512,1024x1024x16384}
echo "--- matrix products alone: unfold's tilings, then torch.mm (TF32 off)"
timeout 180 "$RUN/unfold" bench --device gpu --matmul "$SHAPES" --reps 20 | tee "$OUT/unfold_matmul.jsonl"
timeout 180 python3 "$RUN/torch_matmul_bench.py" "$SHAPES" | tee "$OUT/torch_matmul.jsonl"

echo "--- time loops for hidden > 256 (ref, large): a fused dispatch per step against tiled steps"
for loop in per-step tiled-steps; do
    timeout 200 "$RUN/unfold" bench --device gpu --configs ref,large --reps 10 --time-loop "$loop"
done | tee "$OUT/time_loops.jsonl"

echo "--- unfold on the GPU"
timeout 300 "$RUN/unfold" bench --device gpu --configs "${CONFIGS:-latency,small,ref,large}" --reps 20 | tee "$OUT/unfold_gpu.jsonl"
echo "--- PyTorch / cuDNN on the same GPU"
timeout 300 python3 "$RUN/torch_rnn_bench.py" cuda | tee "$OUT/torch_cuda.jsonl"
python3 scripts/compare_bench.py "$OUT/unfold_gpu.jsonl" "$OUT/torch_cuda.jsonl" \
    "$OUT/unfold_matmul.jsonl" "$OUT/torch_matmul.jsonl" "$OUT/time_loops.jsonl" | tee "$OUT/table.md"
