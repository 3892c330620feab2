"""Scaling curves: training-step time against sequence length T and against B·H², and
the memory a step holds against T, for unfold and PyTorch measured in the same run.

Each point is one process of `unfold bench` and one of `scripts/torch_rnn_bench.py`
(fixed lengths, one workload per process, so the CPU's peak-resident figure is that
workload's own). Writes, under --out:

    scaling.jsonl   every row of both programs, as they print them
    scaling.md      the tables (ms per step, µs per time step, GFLOP/s, memory)
    scaling.svg     three log-log panels: ms against T, ms against B·H², MB against T

    python3 scripts/scaling.py --unfold target/release/unfold --device cpu|gpu
        [--python .venv/bin/python] [--cell tanh|lstm|gru] [--steps 64,128,...]
        [--batches 16,64,256] [--hiddens 128,256,512,1024] [--reps N] [--out DIR]
    python3 scripts/scaling.py --plot-only DIR/scaling.jsonl [--out DIR]

--device gpu runs unfold on the GPU and PyTorch on CUDA (cuDNN); --device cpu both on
the CPU. The T sweep uses `ref`'s other sizes (B 64, I 128, H 512, C 128); the size
sweep T 64, I 128, C 128 and every (B, H) of --batches × --hiddens. Needs only Python's
standard library (and PyTorch for its side).
"""
import argparse
import json
import math
import os
import subprocess
import sys

T_SHAPE = (64, 128, 512, 128)  # B, I, H, C of the T sweep (ref's)
SIZE_SHAPE = (64, 128, 128)  # T, I, C of the size sweep
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}
IMPLS = ("unfold", "torch")
COLORS = {"unfold": "#1f77b4", "torch": "#d62728"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unfold", default="target/release/unfold", help="the unfold binary")
    ap.add_argument("--python", default=sys.executable, help="a Python with PyTorch")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--cell", choices=list(GATES), default="tanh")
    ap.add_argument("--steps", default="64,128,256,512,1024,2048,4096")
    ap.add_argument("--batches", default="16,64,256")
    ap.add_argument("--hiddens", default="128,256,512,1024")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per point (median)")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch's CPU threads")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per process")
    ap.add_argument("--out", default="scaling-out")
    ap.add_argument("--plot-only", metavar="JSONL",
                    help="no measuring: tables and plot from an earlier run's rows")
    return ap.parse_args()


def ints(csv):
    return [int(v) for v in csv.split(",") if v.strip()]


def points(args):
    """(sweep, spec) for every point: the T sweep, then the size sweep."""
    b, i, h, c = T_SHAPE
    for t in ints(args.steps):
        yield "T", f"{b}x{t}x{i}x{h}x{c}"
    t, i, c = SIZE_SHAPE
    for b in ints(args.batches):
        for h in ints(args.hiddens):
            yield "size", f"{b}x{t}x{i}x{h}x{c}"


def run_json(cmd, timeout):
    """The JSON rows a command prints; none (and a note on stderr) if it fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout} s: {' '.join(cmd)}", file=sys.stderr)
        return []
    if done.returncode != 0:
        print(f"  failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}",
              file=sys.stderr)
        return []
    return [json.loads(l) for l in done.stdout.splitlines() if l.startswith("{")]


def measure(args):
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "scaling.jsonl")
    rows, seen = [], set()
    with open(path, "w") as out:
        for sweep, spec in points(args):
            if spec in seen:  # a shape both sweeps contain is measured once
                continue
            seen.add(spec)
            unfold = [args.unfold, "bench", "--device", args.device, "--cell", args.cell,
                      "--configs", spec, "--lengths", "fixed", "--reps", str(args.reps)]
            torch = [args.python, os.path.join(os.path.dirname(__file__), "torch_rnn_bench.py"),
                     "cuda" if args.device == "gpu" else "cpu", spec, "fixed",
                     "--cell", args.cell, "--reps", str(args.reps)]
            if args.threads:
                torch += ["--threads", str(args.threads)]
            for cmd in (unfold, torch):
                for row in run_json(cmd, args.timeout):
                    row["sweep"] = sweep
                    rows.append(row)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(f"  {row['impl']:6} {spec:22} {row['train_step_ms']:10.2f} ms",
                          flush=True)
    return rows


def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def flops(r):
    """Floating-point operations of the step: forward products twice over backward."""
    g = GATES.get(r.get("cell", "tanh"), 1)
    d = 2 if r.get("bidirectional") else 1
    per_token = d * (g * (r["I"] * r["H"] + r["H"] * r["H"]) + r["H"] * r["C"])
    return 6.0 * r["B"] * r["T"] * per_token


def by_shape(rows):
    """{(B, T, I, H, C): {impl: row}}, TF32 rows left out."""
    table = {}
    for r in rows:
        if r.get("tf32") or r.get("variable"):
            continue
        key = (r["B"], r["T"], r["I"], r["H"], r["C"])
        table.setdefault(key, {})[r["impl"]] = r
    return table


def tables(rows):
    shapes = by_shape(rows)
    lines = []
    first = next(iter(rows), {})
    devices = {r["impl"]: r.get("device", "?") for r in rows}
    lines.append(f"Cell `{first.get('cell', 'tanh')}`, fixed lengths; "
                 + "; ".join(f"{k}: {v}" for k, v in devices.items()) + ".\n")
    head = ("| {} | unfold ms | PyTorch ms | ratio | unfold µs / time step | "
            "PyTorch µs / time step | unfold GFLOP/s | PyTorch GFLOP/s | unfold MB | PyTorch MB |")
    sep = "|---" * 10 + "|"

    def row(label, key):
        pair = shapes.get(key, {})
        u, p = pair.get("unfold"), pair.get("torch")
        t = key[1]
        cells = [label]
        cells.append(f"{u['train_step_ms']:.2f}" if u else "–")
        cells.append(f"{p['train_step_ms']:.2f}" if p else "–")
        cells.append(f"**{u['train_step_ms'] / p['train_step_ms']:.2f}**" if u and p else "–")
        # a step runs T forward and T backward dependent time steps
        for r in (u, p):
            cells.append(f"{r['train_step_ms'] * 1e3 / (2 * t):.1f}" if r else "–")
        for r in (u, p):
            cells.append(f"{flops(r) / r['train_step_ms'] / 1e6:.0f}" if r else "–")
        for r in (u, p):
            mem = r.get("memory_bytes") if r else None
            cells.append(f"{mem / 2**20:.0f}" if mem else "–")
        return "| " + " | ".join(cells) + " |"

    t_keys = sorted(k for k in shapes if (k[0], k[2], k[3], k[4]) == T_SHAPE)
    if t_keys:
        b, i, h, c = T_SHAPE
        lines.append(f"Against the sequence length (B {b}, I {i}, H {h}, C {c}):\n")
        lines.append(head.format("T"))
        lines.append(sep)
        lines += [row(str(k[1]), k) for k in t_keys]
        lines.append("")
    s_keys = sorted((k for k in shapes if (k[1], k[2], k[4]) == SIZE_SHAPE),
                    key=lambda k: (k[0] * k[3] ** 2, k[0]))
    if s_keys:
        t, i, c = SIZE_SHAPE
        lines.append(f"Against B·H² (T {t}, I {i}, C {c}):\n")
        lines.append(head.format("B, H (B·H²)"))
        lines.append(sep)
        lines += [row(f"{k[0]}, {k[3]} ({k[0] * k[3] ** 2:.2g})", k) for k in s_keys]
        lines.append("")
    memory_kinds = {r["impl"]: r.get("memory") for r in rows if r.get("memory")}
    if memory_kinds:
        lines.append("Memory: " + "; ".join(f"{k}: {v}" for k, v in memory_kinds.items())
                     + ".")
    return "\n".join(lines) + "\n"


# --- the plot: hand-written SVG, log-log axes, so nothing beyond the standard library ---

W, H_PANEL, LEFT, RIGHT, TOP, BOTTOM = 760, 330, 80, 170, 40, 50


def log_ticks(lo, hi):
    """Powers of ten, with 2 and 5 between them when the range is short."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in ((1, 2, 5) if math.log10(hi / lo) < 3 else (1,)):
            v = m * 10 ** e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def fmt(v):
    return f"{v:g}" if 1e-3 <= v < 1e5 else f"{v:.0e}".replace("e+0", "e").replace("e+", "e")


def panel(y0, title, x_label, y_label, series):
    """One panel's SVG: `series` is [(label, colour, dash pattern or "", [(x, y), ...])]."""
    pts = [p for s in series for p in s[3] if p[0] > 0 and p[1] > 0]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x_lo, x_hi = min(xs) / 1.3, max(xs) * 1.3
    y_lo, y_hi = min(ys) / 1.5, max(ys) * 1.5
    pw, ph = W - LEFT - RIGHT, H_PANEL - TOP - BOTTOM

    def sx(x):
        return LEFT + pw * math.log(x / x_lo) / math.log(x_hi / x_lo)

    def sy(y):
        return y0 + TOP + ph * (1 - math.log(y / y_lo) / math.log(y_hi / y_lo))

    out = [f'<text x="{W / 2}" y="{y0 + 24}" text-anchor="middle" font-size="15">{title}</text>',
           f'<rect x="{LEFT}" y="{y0 + TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    for v in log_ticks(x_lo, x_hi):
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{y0 + TOP}" x2="{x:.1f}" y2="{y0 + TOP + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + TOP + ph + 16}" text-anchor="middle" font-size="11">{fmt(v)}</text>')
    for v in log_ticks(y_lo, y_hi):
        y = sy(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{fmt(v)}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{y0 + H_PANEL - 10}" text-anchor="middle" font-size="12">{x_label}</text>')
    out.append(f'<text transform="translate(18 {y0 + TOP + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">{y_label}</text>')
    for n, (label, colour, pattern, line) in enumerate(series):
        line = sorted(p for p in line if p[0] > 0 and p[1] > 0)
        if not line:
            continue
        dash = f' stroke-dasharray="{pattern}"' if pattern else ""
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for x, y in line:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        ly = y0 + TOP + 14 + 18 * n
        out.append(f'<line x1="{W - RIGHT + 12}" y1="{ly - 4}" x2="{W - RIGHT + 36}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{W - RIGHT + 42}" y="{ly}" font-size="12">{label}</text>')
    return "\n".join(out)


def names(rows):
    """Legend names: unfold and PyTorch with the device kind each ran on."""
    out = {}
    for r in rows:
        dev = r.get("device", "")
        where = "GPU" if ("GPU" in dev or r["impl"] == "torch" and not dev.startswith("cpu")) else "CPU"
        out[r["impl"]] = f"{'unfold' if r['impl'] == 'unfold' else 'PyTorch'} ({where})"
    return out


def plot(rows):
    shapes = by_shape(rows)
    label = names(rows)
    t_series, size_series, mem_series = [], [], []
    for impl in IMPLS:
        t_pts = [(k[1], v[impl]["train_step_ms"]) for k, v in shapes.items()
                 if impl in v and (k[0], k[2], k[3], k[4]) == T_SHAPE]
        t_series.append((label.get(impl, impl), COLORS[impl], "", t_pts))
        mem_pts = [(k[1], v[impl].get("memory_bytes", 0) / 2**20) for k, v in shapes.items()
                   if impl in v and (k[0], k[2], k[3], k[4]) == T_SHAPE]
        mem_series.append((label.get(impl, impl), COLORS[impl], "", mem_pts))
        # one line per batch size: solid for the largest, shorter dashes for smaller ones
        batches = sorted({k[0] for k in shapes if (k[1], k[2], k[4]) == SIZE_SHAPE})
        for n, b in enumerate(batches):
            pattern = "" if b == batches[-1] else f"{2 + 3 * n} 3"
            pts = [(k[0] * k[3] ** 2, v[impl]["train_step_ms"]) for k, v in shapes.items()
                   if impl in v and (k[1], k[2], k[4]) == SIZE_SHAPE and k[0] == b]
            size_series.append((f"{label.get(impl, impl)}, B {b}", COLORS[impl], pattern,
                                pts))
    cell = next(iter(rows), {}).get("cell", "tanh")
    b, i, h, c = T_SHAPE
    t, si, sc = SIZE_SHAPE
    panels = [
        (f"Training step against T ({cell}; B {b}, I {i}, H {h}, C {c})", "T (steps)",
         "ms per training step", t_series),
        (f"Training step against B·H² ({cell}; T {t}, I {si}, C {sc})", "B·H²",
         "ms per training step", size_series),
        (f"Memory a step holds against T (B {b}, H {h})", "T (steps)", "MB", mem_series),
    ]
    body = [panel(n * H_PANEL, *p) for n, p in enumerate(panels)]
    height = H_PANEL * len(panels)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
            f'font-family="sans-serif">\n<rect width="{W}" height="{height}" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def write(path, text):
    """Writes through a temporary file and a rename, so a file is never half-written."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    args = parse_args()
    rows = load(args.plot_only) if args.plot_only else measure(args)
    if not rows:
        sys.exit("no rows measured")
    os.makedirs(args.out, exist_ok=True)
    md = tables(rows)
    write(os.path.join(args.out, "scaling.md"), md)
    write(os.path.join(args.out, "scaling.svg"), plot(rows))
    print(md)


if __name__ == "__main__":
    main()
