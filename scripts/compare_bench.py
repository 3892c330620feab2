"""Side-by-side tables from one run on one card (JSON lines):

    compare_bench.py unfold_gpu.jsonl torch_cuda.jsonl \
        [unfold_matmul.jsonl torch_matmul.jsonl [time_loops.jsonl]]

Training steps: config, length mode, cell, unfold ms, PyTorch ms (TF32 off), ratio (< 1:
unfold faster). Rows are matched on (config, lengths, cell); a row without a "cell" (from
before cells were recorded) matches any cell. Matrix products (when given): shape,
unfold's tilings against torch.mm. Time loops (when given): the same workloads under each
`--time-loop`, after `--autotune` (the time loop it kept, marked "tuned"), and with
`--upload-each-step` (marked); then, from the kernel profiles among them (`--profile`
rows), each profiled step's GPU time per phase and its five longest kernels."""
import json, sys

NAN = float("nan")

def load_all(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip().startswith("{")]

def load(path):
    """The JSON rows of a file, less kernel profiles (`unfold bench --profile`)."""
    return [r for r in load_all(path) if "profile" not in r]

def profile_tables(rows):
    """Per profiled step: GPU time per phase, and the kernels that took most of it."""
    steps = {}
    for r in rows:
        key = (r["profile"], r["cell"] + (" (bi)" if r.get("bidirectional") else ""),
               "variable" if r["variable"] else "fixed",
               r["time_loop"] + (" (tuned)" if r.get("autotuned") else ""))
        steps.setdefault(key, []).append(r)
    for (config, cell, lengths, loop), kernels in steps.items():
        total = sum(k["total_ms"] for k in kernels)
        print()
        print(f"GPU time of one step, {config} {cell} {lengths}, {loop}: {total:.2f} ms in "
              f"{sum(k['calls'] for k in kernels)} dispatches")
        print()
        print("| phase | ms | share |")
        print("|---|---|---|")
        phases = {}
        for k in kernels:
            phases[k["phase"]] = phases.get(k["phase"], 0.0) + k["total_ms"]
        for phase, ms in phases.items():
            print(f"| {phase} | {ms:.3f} | {ms / total:.0%} |")
        print()
        print("| the five longest | calls | ms | µs each | GFLOP/s | detail |")
        print("|---|---|---|---|---|---|")
        for k in sorted(kernels, key=lambda k: -k["total_ms"])[:5]:
            rate = "" if k["gflops"] is None else f"{k['gflops']:.0f}"
            print(f"| {k['phase']}: {k['kernel']} | {k['calls']} | {k['total_ms']:.3f} | "
                  f"{k['mean_us']:.1f} | {rate} | {k['detail']} |")

def same_workload(a, b):
    """Same config and lengths, the same cell where both rows record one, and the same
    directions (rows without "bidirectional" are one-directional)."""
    return (a["config"], a["variable"]) == (b["config"], b["variable"]) and (
        "cell" not in a or "cell" not in b or a["cell"] == b["cell"]) and (
        a.get("bidirectional", False) == b.get("bidirectional", False))

def torch_ms(r):
    """PyTorch's time for the workload of unfold's row r (NaN if none): with TF32 off, or
    on for a row of unfold's mixed precision."""
    pool = theirs_tf32 if r.get("precision") == "mixed" else theirs
    t = next((t for t in pool if same_workload(r, t)), None)
    return t["train_step_ms"] if t else NAN

def lengths(r):
    return "variable" if r["variable"] else "fixed"

ours = load(sys.argv[1])
theirs = [r for r in load(sys.argv[2]) if not r.get("tf32") and not r.get("amp")]
theirs_tf32 = [r for r in load(sys.argv[2]) if r.get("tf32")]
theirs_amp = [r for r in load(sys.argv[2]) if r.get("amp")]
print("| config | lengths | cell | unfold ms | PyTorch ms | unfold / PyTorch | unfold GFLOP/s | host record ms | dispatches |")
print("|---|---|---|---|---|---|---|---|---|")
for r in ours:
    tm = torch_ms(r)
    cell = r.get("cell", "tanh") + (" (bi)" if r.get("bidirectional") else "")
    print(f"| {r['config']} | {lengths(r)} | {cell} | {r['train_step_ms']:.2f} | {tm:.2f} | "
          f"{r['train_step_ms'] / tm:.2f} | {r['gflops']:.0f} | {r['host_record_ms']:.2f} | {r['dispatches']} |")

if len(sys.argv) > 4:
    # torch.mm by shape and precision (fp32, tf32, fp16); unfold's cooperative-matrix
    # rows (f16 operands, f32 accumulation) are compared with fp16, the others with fp32
    torch_mm = {(r["matmul"], r.get("precision", "fp32")): r for r in load(sys.argv[4])}
    print()
    print("| m x n x k | unfold plan | unfold ms | unfold TFLOP/s | torch.mm | torch.mm ms | torch.mm TFLOP/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in load(sys.argv[3]):
        mode = "fp16" if "Coop" in r["plan"] else "fp32"
        t = torch_mm.get((r["matmul"], mode), {"ms": NAN, "tflops": NAN})
        print(f"| {r['matmul']} | {r['plan']} | {r['ms']:.3f} | {r['tflops']:.2f} | {mode} | "
              f"{t['ms']:.3f} | {t['tflops']:.2f} | {r['ms'] / t['ms']:.2f} |")
    others = [r for r in load(sys.argv[4]) if r.get("precision") == "tf32"]
    if others:
        print()
        print("torch.mm with TF32: " + ", ".join(f"{r['matmul']} {r['tflops']:.1f} TFLOP/s" for r in others))

if len(sys.argv) > 5:
    print()
    print("| config | lengths | cell | time loop | unfold ms | PyTorch ms | ratio | dispatches |")
    print("|---|---|---|---|---|---|---|---|")
    for r in load(sys.argv[5]):
        tm = torch_ms(r)
        loop = r["time_loop"] + (" (tuned)" if r.get("autotuned") else "") + (
            " (batch uploaded every step)" if r.get("batch_upload") == "every step" else "") + (
            " (mixed precision; PyTorch with TF32)" if r.get("precision") == "mixed" else "")
        print(f"| {r['config']} | {lengths(r)} | {r.get('cell', 'tanh')} | {loop} | "
              f"{r['train_step_ms']:.2f} | {tm:.2f} | {r['train_step_ms'] / tm:.2f} | {r['dispatches']} |")
    mixed = [r for r in load(sys.argv[5]) if r.get("precision") == "mixed"]
    if mixed:
        print()
        print("Mixed precision: unfold (f16 products, f32 accumulation) against PyTorch in fp32, with TF32, and under AMP")
        print()
        print("| config | lengths | cell | unfold mixed ms | PyTorch fp32 | PyTorch TF32 | PyTorch AMP | unfold / TF32 | unfold / AMP |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in mixed:
            def ms(pool):
                t = next((t for t in pool if same_workload(r, t)), None)
                return t["train_step_ms"] if t else NAN
            fp32, tf32, amp = ms(theirs), ms(theirs_tf32), ms(theirs_amp)
            u = r["train_step_ms"]
            print(f"| {r['config']} | {lengths(r)} | {r.get('cell', 'tanh')} | {u:.2f} | {fp32:.2f} | "
                  f"{tf32:.2f} | {amp:.2f} | {u / tf32:.2f} | {u / amp:.2f} |")
    profile_tables([r for r in load_all(sys.argv[5]) if "profile" in r])
