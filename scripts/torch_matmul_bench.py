"""torch.mm (cuBLAS, fp32, TF32 off) on the shapes `unfold bench --matmul` takes, one JSON
line each: the reference for unfold's matrix-product kernel on the same card.

    python3 torch_matmul_bench.py 4096x4096x4096,64x512x512 [reps]
"""
import json, sys
import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
shapes = [tuple(int(d) for d in s.split("x")) for s in sys.argv[1].split(",")]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
for m, n, k in shapes:
    a = torch.randn(m, k, device="cuda")
    b = torch.randn(k, n, device="cuda")
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
                      "matmul": f"{m}x{n}x{k}", "ms": round(ms, 4),
                      "tflops": round(2 * m * n * k / (ms * 1e-3) / 1e12, 3)}))
