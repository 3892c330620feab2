"""torch.mm (cuBLAS) on the shapes `unfold bench --matmul` takes, one JSON line each: the
reference for unfold's matrix-product kernels on the same card. fp32 with TF32 off by
default; `--tf32` lets cuBLAS round operands to TF32 (tensor cores, fp32 range), `--fp16`
multiplies f16 copies of the operands with f32 accumulation (what autocast does): the two
references for unfold's mixed precision (`bench --mixed-precision`).

    python3 torch_matmul_bench.py 4096x4096x4096,64x512x512 [reps] [--tf32 | --fp16]
"""
import json, sys
import torch

args = [a for a in sys.argv[1:] if not a.startswith("--")]
mode = "fp16" if "--fp16" in sys.argv else "tf32" if "--tf32" in sys.argv else "fp32"
torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
torch.backends.cudnn.allow_tf32 = mode == "tf32"
shapes = [tuple(int(d) for d in s.split("x")) for s in args[0].split(",")]
reps = int(args[1]) if len(args) > 1 else 20
dtype = torch.float16 if mode == "fp16" else torch.float32
for m, n, k in shapes:
    a = torch.randn(m, k, device="cuda", dtype=dtype)
    b = torch.randn(k, n, device="cuda", dtype=dtype)
    torch.mm(a, b)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(a, b)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    ms = sorted(times)[reps // 2]
    print(json.dumps({"impl": "torch", "device": torch.cuda.get_device_name(),
                      "matmul": f"{m}x{n}x{k}", "precision": mode, "ms": round(ms, 4),
                      "tflops": round(2 * m * n * k / (ms * 1e-3) / 1e12, 3)}))
