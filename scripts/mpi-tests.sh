#!/usr/bin/env bash
# Data-parallel training tests (unfold::distributed) under MPI: builds the `mpi` test
# binary with `--features mpi` and runs it under `mpirun -np ${NP:-2}` on this machine
# (loopback); then runs it as `<binary> --cli`, a plain process that starts `mpirun` on
# the `unfold` binary (train and classify data-parallel, resuming across rank counts, a
# failing rank). Needs OpenMPI and libclang (Debian: `apt-get install -y libopenmpi-dev
# openmpi-bin libclang-dev`). Arguments go to the test binary: a substring selects cases.
#
#   scripts/mpi-tests.sh                 # every case, 2 ranks
#   NP=3 scripts/mpi-tests.sh uneven     # the uneven splits on 3 ranks
#
# The GPU case runs on whatever Device::gpu() finds (CI: WGPU_ADAPTER_NAME=llvmpipe);
# UNFOLD_MPI_GPU=0 skips it, UNFOLD_REQUIRE_GPU=1 makes a missing adapter a failure.
# MPIRUN_ARGS adds options to mpirun (e.g. "--mca btl_vader_single_copy_mechanism none"
# in containers that forbid cross-memory attach).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mpirun >/dev/null; then
    echo "mpirun not found: apt-get install -y libopenmpi-dev openmpi-bin libclang-dev" >&2
    exit 1
fi

echo "--- cargo build --features mpi --test mpi"
# the test target's artifact (the `unfold` binary is built too, for the CLI tests)
bin=$(cargo test --features mpi --test mpi --no-run --message-format=json \
    | grep '"kind":\["test"\]' | grep '"name":"mpi"' \
    | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
if [ -z "$bin" ]; then
    echo "could not find the mpi test binary" >&2
    exit 1
fi

# lavapipe's window-system code complains without it; compute does not need it
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
np="${NP:-2}"
root=()
if [ "$(id -u)" = 0 ]; then root=(--allow-run-as-root); fi
echo "--- mpirun -np $np $bin"
# shellcheck disable=SC2086
timeout "${UNFOLD_MPI_TIMEOUT:-600}" mpirun "${root[@]}" --oversubscribe -np "$np" \
    ${MPIRUN_ARGS:-} "$bin" "$@"

echo "--- $bin --cli (the unfold command line under mpirun)"
export UNFOLD_MPIRUN="mpirun ${root[*]} --oversubscribe ${MPIRUN_ARGS:-}"
timeout "${UNFOLD_MPI_TIMEOUT:-600}" "$bin" --cli "$@"
