"""torch.mm on the shapes `unfold bench --matmul` takes, one JSON line each: the reference
for unfold's matrix products on the same machine. On the GPU (cuBLAS) fp32 with TF32 off
by default; `--tf32` lets cuBLAS round operands to TF32 (tensor cores, fp32 range),
`--fp16` multiplies f16 copies of the operands with f32 accumulation (what autocast does):
the two references for unfold's mixed precision (`bench --mixed-precision`). `--cpu`
times torch.mm on the CPU instead (fp32, `--threads N`, default 2), next to `unfold bench
--device cpu --matmul`.

    python3 torch_matmul_bench.py 4096x4096x4096,64x512x512 [reps] [--tf32 | --fp16 | --cpu [--threads N]]
"""
import argparse, json, time
import torch

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("shapes", help="comma-separated MxNxK")
ap.add_argument("reps", nargs="?", type=int, default=20)
mode_flags = ap.add_mutually_exclusive_group()
mode_flags.add_argument("--tf32", action="store_true")
mode_flags.add_argument("--fp16", action="store_true")
mode_flags.add_argument("--cpu", action="store_true")
ap.add_argument("--threads", type=int, default=2, help="CPU threads (with --cpu)")
opts = ap.parse_args()
cpu = opts.cpu
mode = "fp16" if opts.fp16 else "tf32" if opts.tf32 else "fp32"
torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
torch.backends.cudnn.allow_tf32 = mode == "tf32"
if cpu:
    torch.set_num_threads(opts.threads)
shapes = [tuple(int(d) for d in s.split("x")) for s in opts.shapes.split(",")]
reps = opts.reps
threads = opts.threads
dtype = torch.float16 if mode == "fp16" else torch.float32
device = "cpu" if cpu else "cuda"


def once_ms(a, b, out):
    """One product's time in milliseconds, waiting for the GPU where there is one."""
    if cpu:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        return (time.perf_counter() - start) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.mm(a, b, out=out)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


name = f"cpu x{threads}" if cpu else torch.cuda.get_device_name()
for m, n, k in shapes:
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    once_ms(a, b, out)  # warm-up
    times = sorted(once_ms(a, b, out) for _ in range(reps))
    ms = times[reps // 2]
    print(json.dumps({"impl": "torch", "device": name, "matmul": f"{m}x{n}x{k}",
                      "precision": mode, "ms": round(ms, 4),
                      "tflops": round(2 * m * n * k / (ms * 1e-3) / 1e12, 3)}))
