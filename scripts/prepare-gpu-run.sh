#!/usr/bin/env bash
# Builds here what scripts/gpu-machine.sh runs there, into the git-ignored devrun/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
rm -rf devrun && mkdir -p devrun/tests
cp target/release/unfold devrun/
# the integration tests are one binary; gpu-machine.sh picks its GPU modules by name
exe=$(cargo test --release --no-run --test it --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
cp "$exe" devrun/tests/it
bench=$(cargo bench --no-run --bench train_step --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
cp "$bench" devrun/train_step_bench
cp /usr/lib/x86_64-linux-gnu/libvulkan.so.1 devrun/
cp scripts/torch_rnn_bench.py scripts/torch_matmul_bench.py scripts/scaling.py devrun/
strip devrun/unfold devrun/tests/* devrun/train_step_bench
du -sh devrun
