"""Side-by-side tables from one run on one card (JSON lines):

    compare_bench.py unfold_gpu.jsonl torch_cuda.jsonl \
        [unfold_matmul.jsonl torch_matmul.jsonl [time_loops.jsonl]]

Training steps: config, length mode, unfold ms, PyTorch ms (TF32 off), ratio (< 1: unfold
faster). Matrix products (when given): shape, unfold's tilings against torch.mm. Time
loops (when given): the same workloads under each `--time-loop`."""
import json, sys

def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip().startswith("{")]

ours = {(r["config"], r["variable"]): r for r in load(sys.argv[1])}
theirs = {(r["config"], r["variable"]): r for r in load(sys.argv[2]) if not r.get("tf32")}
print("| config | lengths | unfold ms | PyTorch ms | unfold / PyTorch | unfold GFLOP/s | host record ms | dispatches |")
print("|---|---|---|---|---|---|---|---|")
for key, r in ours.items():
    t = theirs.get(key)
    tm = t["train_step_ms"] if t else float("nan")
    print(f"| {key[0]} | {'variable' if key[1] else 'fixed'} | {r['train_step_ms']:.2f} | {tm:.2f} | "
          f"{r['train_step_ms'] / tm:.2f} | {r['gflops']:.0f} | {r['host_record_ms']:.2f} | {r['dispatches']} |")

if len(sys.argv) > 4:
    torch_mm = {r["matmul"]: r for r in load(sys.argv[4])}
    print()
    print("| m x n x k | unfold plan | unfold ms | unfold TFLOP/s | torch.mm ms | torch.mm TFLOP/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in load(sys.argv[3]):
        t = torch_mm.get(r["matmul"], {"ms": float("nan"), "tflops": float("nan")})
        print(f"| {r['matmul']} | {r['plan']} | {r['ms']:.3f} | {r['tflops']:.2f} | "
              f"{t['ms']:.3f} | {t['tflops']:.2f} | {r['ms'] / t['ms']:.2f} |")

if len(sys.argv) > 5:
    print()
    print("| config | lengths | time loop | unfold ms | PyTorch ms | ratio | dispatches |")
    print("|---|---|---|---|---|---|---|")
    for r in load(sys.argv[5]):
        t = theirs.get((r["config"], r["variable"]))
        tm = t["train_step_ms"] if t else float("nan")
        print(f"| {r['config']} | {'variable' if r['variable'] else 'fixed'} | {r['time_loop']} | "
              f"{r['train_step_ms']:.2f} | {tm:.2f} | {r['train_step_ms'] / tm:.2f} | {r['dispatches']} |")
