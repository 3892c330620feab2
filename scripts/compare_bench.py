"""Side-by-side tables from one run on one card (JSON lines):

    compare_bench.py unfold_gpu.jsonl torch_cuda.jsonl \
        [unfold_matmul.jsonl torch_matmul.jsonl [time_loops.jsonl]]

Training steps: config, length mode, cell, unfold ms, PyTorch ms (TF32 off), ratio (< 1:
unfold faster). Rows are matched on (config, lengths, cell); a row without a "cell" (from
before cells were recorded) matches any cell. Matrix products (when given): shape,
unfold's tilings against torch.mm. Time loops (when given): the same workloads under each
`--time-loop`, after `--autotune` (the time loop it kept, marked "tuned"), and with
`--upload-each-step` (marked); kernel profiles (`--profile` rows) are left out."""
import json, sys

NAN = float("nan")

def load(path):
    """The JSON rows of a file, less kernel profiles (`unfold bench --profile`)."""
    with open(path) as f:
        rows = [json.loads(l) for l in f if l.strip().startswith("{")]
    return [r for r in rows if "profile" not in r]

def same_workload(a, b):
    """Same config and lengths, the same cell where both rows record one, and the same
    directions (rows without "bidirectional" are one-directional)."""
    return (a["config"], a["variable"]) == (b["config"], b["variable"]) and (
        "cell" not in a or "cell" not in b or a["cell"] == b["cell"]) and (
        a.get("bidirectional", False) == b.get("bidirectional", False))

def torch_ms(r):
    """PyTorch's time for the workload of unfold's row r (NaN if none)."""
    t = next((t for t in theirs if same_workload(r, t)), None)
    return t["train_step_ms"] if t else NAN

def lengths(r):
    return "variable" if r["variable"] else "fixed"

ours = load(sys.argv[1])
theirs = [r for r in load(sys.argv[2]) if not r.get("tf32")]
print("| config | lengths | cell | unfold ms | PyTorch ms | unfold / PyTorch | unfold GFLOP/s | host record ms | dispatches |")
print("|---|---|---|---|---|---|---|---|---|")
for r in ours:
    tm = torch_ms(r)
    cell = r.get("cell", "tanh") + (" (bi)" if r.get("bidirectional") else "")
    print(f"| {r['config']} | {lengths(r)} | {cell} | {r['train_step_ms']:.2f} | {tm:.2f} | "
          f"{r['train_step_ms'] / tm:.2f} | {r['gflops']:.0f} | {r['host_record_ms']:.2f} | {r['dispatches']} |")

if len(sys.argv) > 4:
    torch_mm = {r["matmul"]: r for r in load(sys.argv[4])}
    print()
    print("| m x n x k | unfold plan | unfold ms | unfold TFLOP/s | torch.mm ms | torch.mm TFLOP/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in load(sys.argv[3]):
        t = torch_mm.get(r["matmul"], {"ms": NAN, "tflops": NAN})
        print(f"| {r['matmul']} | {r['plan']} | {r['ms']:.3f} | {r['tflops']:.2f} | "
              f"{t['ms']:.3f} | {t['tflops']:.2f} | {r['ms'] / t['ms']:.2f} |")

if len(sys.argv) > 5:
    print()
    print("| config | lengths | cell | time loop | unfold ms | PyTorch ms | ratio | dispatches |")
    print("|---|---|---|---|---|---|---|---|")
    for r in load(sys.argv[5]):
        tm = torch_ms(r)
        loop = r["time_loop"] + (" (tuned)" if r.get("autotuned") else "") + (
            " (batch uploaded every step)" if r.get("batch_upload") == "every step" else "")
        print(f"| {r['config']} | {lengths(r)} | {r.get('cell', 'tanh')} | {loop} | "
              f"{r['train_step_ms']:.2f} | {tm:.2f} | {r['train_step_ms'] / tm:.2f} | {r['dispatches']} |")
