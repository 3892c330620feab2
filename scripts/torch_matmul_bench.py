"""torch.mm on the shapes `unfold bench --matmul` takes, one JSON line each: the reference
for unfold's matrix products on the same machine. On the GPU (cuBLAS) fp32 with TF32 off
by default; `--tf32` lets cuBLAS round operands to TF32 (tensor cores, fp32 range),
`--fp16` multiplies f16 copies of the operands with f32 accumulation (what autocast does):
the two references for unfold's mixed precision (`bench --mixed-precision`). `--cpu`
times torch.mm on the CPU instead (fp32, `--threads N`, default 2), next to `unfold bench
--device cpu --matmul`.

    python3 torch_matmul_bench.py 4096x4096x4096,64x512x512 [reps] [--tf32 | --fp16 | --cpu [--threads N]]
"""
import json, sys, time
import torch

flags = sys.argv[1:]
args = []
threads = 2
i = 0
while i < len(flags):
    if flags[i] == "--threads":
        threads = int(flags[i + 1])
        i += 1
    elif not flags[i].startswith("--"):
        args.append(flags[i])
    i += 1
cpu = "--cpu" in flags
mode = "fp16" if "--fp16" in flags else "tf32" if "--tf32" in flags else "fp32"
if cpu and mode != "fp32":
    sys.exit("--cpu times fp32 only")
torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
torch.backends.cudnn.allow_tf32 = mode == "tf32"
if cpu:
    torch.set_num_threads(threads)
shapes = [tuple(int(d) for d in s.split("x")) for s in args[0].split(",")]
reps = int(args[1]) if len(args) > 1 else 20
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
