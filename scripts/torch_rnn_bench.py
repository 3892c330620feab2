"""PyTorch's time for the training step `unfold bench` times, on the same workloads.

One step: forward through a one-layer recurrent network (nn.RNN tanh/relu, nn.LSTM or
nn.GRU; cuDNN on CUDA, PyTorch's own CPU kernels otherwise), a linear readout at every
step, softmax cross-entropy over the valid positions, backward, and an SGD update (lr
0.01). fp32 throughout, TF32 off unless a line says `"tf32": true`; a line with `"amp":
true` ran under automatic mixed precision (autocast to f16 on CUDA, with a gradient
scaler), the reference for unfold's mixed precision along with TF32. Variable length:
lengths uniform in [T/2, T] with the first sequence at T, run through
`pack_padded_sequence`, as unfold's workloads are generated.

Prints one JSON line per (workload, lengths) with the median step time; the fields match
`unfold bench`'s where they mean the same thing, so `scripts/compare_bench.py` reads both.

    python3 scripts/torch_rnn_bench.py [cuda|cpu] [latency|small|ref|large|BxTxIxHxC]
        [fixed|variable] [--cell tanh|relu|lstm|gru] [--bidirectional] [--threads N] [--reps N]

A workload written BxTxIxHxC (batch, steps, input, hidden, classes) is any shape, as
`unfold bench --configs` takes it. Each line also records the memory the step held:
on CUDA the peak of PyTorch's allocated tensors over the warm-up and timed steps, on the
CPU how far the process's peak resident memory rose above its resident memory at the
start of the workload (a clean figure for a process's first workload), as `unfold
bench` records its own.

Without a workload: all four on CUDA (each also once with TF32 on and once under AMP), the
first three on the CPU (large is slow there). Without a device: cuda if available.
"""
import argparse
import json
import os
import time

WORKLOADS = {  # name: (batch B, steps T, input I, hidden H, classes C)
    "latency": (1, 1000, 32, 64, 32),
    "small": (16, 128, 32, 128, 32),
    "ref": (64, 100, 128, 512, 128),
    "large": (256, 64, 512, 1024, 512),
}
CPU_DEFAULT = ["latency", "small", "ref"]
MODULES = {"tanh": "RNN", "relu": "RNN", "lstm": "LSTM", "gru": "GRU"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("device", nargs="?", choices=["cuda", "cpu"])
    ap.add_argument("workload", nargs="?", type=workload_arg,
                    help="latency, small, ref, large, or BxTxIxHxC")
    ap.add_argument("lengths", nargs="?", choices=["fixed", "variable"])
    ap.add_argument("--cell", default="tanh", choices=list(MODULES))
    ap.add_argument("--bidirectional", action="store_true",
                    help="both directions (the readout then reads 2 x hidden)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for PyTorch (default: PyTorch's, one per physical core)")
    ap.add_argument("--reps", type=int, default=0,
                    help="timed steps, after 5 warm-up steps (default: 20 on cuda, 5 on cpu)")
    return ap.parse_args()


def workload_arg(spec):
    """An anchor's name, or a shape BxTxIxHxC (named by the anchor it equals, if any)."""
    if spec in WORKLOADS:
        return spec
    try:
        dims = tuple(int(d) for d in spec.split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 5 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: expected latency, small, ref, large or BxTxIxHxC")
    for name, shape in WORKLOADS.items():
        if shape == dims:
            return name
    WORKLOADS[spec] = dims
    return spec


def process_memory(field):
    """A memory figure of /proc/self/status (VmRSS:, VmHWM:) in bytes; 0 where none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def make_rnn(torch, cell, i, h, bidirectional):
    if cell in ("tanh", "relu"):
        return torch.nn.RNN(i, h, nonlinearity=cell, batch_first=True,
                            bidirectional=bidirectional)
    return getattr(torch.nn, MODULES[cell])(i, h, batch_first=True,
                                            bidirectional=bidirectional)


def time_step(torch, dev, name, cell, bidirectional, tf32, variable, reps, amp=False):
    b, t, i, h, c = WORKLOADS[name]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    resident_before = process_memory("VmRSS:")
    torch.manual_seed(0)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rnn = make_rnn(torch, cell, i, h, bidirectional).to(dev)
    readout = torch.nn.Linear(2 * h if bidirectional else h, c).to(dev)
    sgd = torch.optim.SGD([*rnn.parameters(), *readout.parameters()], lr=0.01)
    scaler = torch.amp.GradScaler(dev, enabled=amp)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, i, generator=gen).to(dev)
    y = torch.randint(0, c, (b, t), generator=gen).to(dev)
    if variable:
        lengths = torch.randint(t // 2, t + 1, (b,), generator=gen)
        lengths[0] = t
    else:
        lengths = torch.full((b,), t)
    # lengths stay on the CPU, where pack_padded_sequence wants them
    valid = (torch.arange(t)[None, :] < lengths[:, None]).to(dev)
    pack = torch.nn.utils.rnn.pack_padded_sequence
    unpack = torch.nn.utils.rnn.pad_packed_sequence

    def step():
        sgd.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.float16, enabled=amp):
            if variable:
                packed, _ = rnn(pack(x, lengths, batch_first=True, enforce_sorted=False))
                states, _ = unpack(packed, batch_first=True, total_length=t)
            else:
                states, _ = rnn(x)
            loss = torch.nn.functional.cross_entropy(readout(states)[valid], y[valid])
        scaler.scale(loss).backward()
        scaler.step(sgd)
        scaler.update()

    def wait():
        if dev == "cuda":
            torch.cuda.synchronize()

    for _ in range(5):
        step()
    wait()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        wait()
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    tokens = int(lengths.sum())
    device = torch.cuda.get_device_name() if dev == "cuda" else f"cpu x{torch.get_num_threads()}"
    if dev == "cuda":
        memory = (torch.cuda.max_memory_allocated(), "device, peak allocated")
    else:
        memory = (max(0, process_memory("VmHWM:") - resident_before),
                  "process, peak resident growth")
    return {
        "anchor": f"torch.nn.{MODULES[cell]}",
        "impl": "torch",
        "cell": cell,
        "bidirectional": bidirectional,
        "device": device,
        "torch": torch.__version__,
        "config": name,
        "B": b, "T": t, "I": i, "H": h, "C": c,
        "tf32": tf32,
        "amp": amp,
        "variable": variable,
        "train_step_ms": round(median * 1e3, 3),
        "tokens_per_s": round(tokens / median),
        "memory_bytes": memory[0],
        "memory": memory[1],
    }


def main():
    args = parse_args()
    if args.threads:
        # before torch starts its thread pools
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import torch

    # a fixed count (PyTorch's default is one per physical core), recorded in "device"
    torch.set_num_threads(args.threads or torch.get_num_threads())
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed by an earlier parallel call; it does not affect the timing
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    reps = args.reps or (20 if dev == "cuda" else 5)
    if args.workload:
        names = [args.workload]
    else:
        names = list(WORKLOADS) if dev == "cuda" else CPU_DEFAULT
    # (tf32, amp): fp32 alone, or on CUDA without a workload also TF32 and AMP
    modes = [(False, False), (True, False), (False, True)] \
        if dev == "cuda" and not args.workload else [(False, False)]
    length_modes = {"fixed": [False], "variable": [True]}.get(args.lengths, [False, True])
    for name in names:
        for tf32, amp in modes:
            for variable in length_modes:
                row = time_step(torch, dev, name, args.cell, args.bidirectional, tf32,
                                variable, reps, amp)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
