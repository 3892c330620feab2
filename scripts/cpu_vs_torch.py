#!/usr/bin/env python3
"""unfold's CPU path next to PyTorch's, interleaved, on the anchor workloads.

For each cell, direction count and config: `unfold bench --device cpu` (fixed and
variable lengths in one call), then `torch_rnn_bench.py` for each, round after round, so
that both see the same machine. Prints a Markdown table of ms per training step (median
of the rounds, each round in brackets) and the ratio unfold / PyTorch.

    scripts/cpu_vs_torch.py [--rounds 2] [--cells lstm,gru,tanh] [--configs small,ref]
        [--directions 1,2] [--unfold target/release/unfold] [--python .venv/bin/python]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPS = {"latency": 30, "small": 20, "ref": 10, "large": 5}


def json_lines(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cells", default="lstm,gru,tanh")
    ap.add_argument("--configs", default="small,ref")
    ap.add_argument("--directions", default="1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unfold", default="target/release/unfold")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()

    times = {}  # (cell, dirs, config, variable, impl) -> [ms per round]
    cases = [
        (cell, int(dirs), config)
        for cell in args.cells.split(",")
        for dirs in args.directions.split(",")
        for config in args.configs.split(",")
    ]
    for r in range(args.rounds):
        for cell, dirs, config in cases:
            bi = ["--bidirectional"] if dirs == 2 else []
            reps = str(REPS.get(config, 10))
            for line in json_lines([args.unfold, "bench", "--device", "cpu", "--configs", config,
                                    "--cell", cell, "--reps", reps] + bi):
                key = (cell, dirs, config, line["variable"], "unfold")
                times.setdefault(key, []).append(line["train_step_ms"])
            for variable in (False, True):
                cmd = [args.python, os.path.join(HERE, "torch_rnn_bench.py"), "cpu", config,
                       "variable" if variable else "fixed", "--cell", cell,
                       "--threads", str(args.threads), "--reps", reps] + bi
                for line in json_lines(cmd):
                    key = (cell, dirs, config, variable, "torch")
                    times.setdefault(key, []).append(line["train_step_ms"])
            print(f"round {r + 1}: {cell} x{dirs} {config} done", file=sys.stderr, flush=True)

    def cell_text(ms):
        fmt = (lambda v: f"{v:,.0f}") if statistics.median(ms) >= 100 else (lambda v: f"{v:.1f}")
        return f"{fmt(statistics.median(ms))} ({', '.join(fmt(v) for v in ms)})"

    print("| cell | directions | config | lengths | unfold | PyTorch | ratio |")
    print("|---|---|---|---|---|---|---|")
    for cell, dirs, config in cases:
        for variable in (False, True):
            u = times.get((cell, dirs, config, variable, "unfold"))
            t = times.get((cell, dirs, config, variable, "torch"))
            if not u or not t:
                continue
            ratio = statistics.median(u) / statistics.median(t)
            name = {"lstm": "LSTM", "gru": "GRU"}.get(cell, cell)
            print(f"| {name} | {dirs} | {config} | {'variable' if variable else 'fixed'} | "
                  f"{cell_text(u)} | {cell_text(t)} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
