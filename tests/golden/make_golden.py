"""Generate the PyTorch golden data for `unfold` (read by tests/it/golden.rs):

  tests/golden/golden.json          reference cases and expected outputs of the checkpoints below
  tests/golden/ckpt_*.safetensors   checkpoints written by PyTorch (safetensors.torch.save_file)

Rerun from the repository root (output is deterministic; commit what changed):

  python3 -m venv .venv && .venv/bin/pip install torch numpy safetensors
  .venv/bin/python tests/golden/make_golden.py

Every number is computed in float64 on the CPU, single thread, deterministic algorithms.
Inputs, targets and starting parameters are float32 values (drawn in float32, then
widened), written in their shortest float32 round-trip form: read them as f32. Computed
values (outputs, states, losses, gradients, parameters after optimizer steps) are the
float64 results rounded to 10 significant digits ("significant_digits").

Model per case (dropout 0, zero initial state, batch_first):
  rnn = nn.RNN(I, H, L, nonlinearity="tanh"|"relu") | nn.LSTM(I, H, L) | nn.GRU(I, H, L),
        bidirectional true/false;  out = nn.Linear(D*H, O), D = 2 if bidirectional else 1.
  Parameters, in this order (PyTorch's own): for each layer k, for each direction
  ("l{k}", then "l{k}_reverse" when bidirectional): w_ih = weight_ih_l{k}[_reverse]
  [G*H, in], w_hh [G*H, H], b_ih [G*H], b_hh [G*H]; then w_out = out.weight [O, D*H],
  b_out = out.bias [O]. G = 1 (tanh, relu), 4 (LSTM: gates i, f, g, o), 3 (GRU: r, z, n).
  b_ih and b_hh are drawn independently (uniform(-0.5, 0.5)), so a model that folds them
  into one bias still gets the forward right for tanh/relu/LSTM but not for GRU
  (n = tanh(W_in x + b_in + r * (W_hn h + b_hn))), and its gradients / optimizer state
  for the two biases are checked separately everywhere. Weights use PyTorch's default
  init, uniform(-1/sqrt(H), 1/sqrt(H)).
  Variable lengths go through pack_padded_sequence(enforce_sorted=False): every sequence,
  and the reverse direction too, sees only its own valid steps (the reverse direction
  starts at each sequence's last valid step).

Heads, outputs and losses:
  per_step  outputs[b, t] = out([h_fwd_top(t); h_rev_top(t)]) for t < length[b], zero past
            it; shape [batch, max_len, O].
            classes: one class per valid step; cross_entropy, mean over all valid positions.
            values:  one [O] row per valid step; mse_loss, mean over valid positions and units.
  last_step outputs[b, 0] = out([h_n fwd; h_n rev] of the top layer), i.e. each direction's
            final state (the reverse direction's final state is its state after step 0);
            shape [batch, 1, O].
            classes: one class per sequence, stored as [[c], ...]; cross_entropy mean over
                     sequences.
            values:  one [1, O] target per sequence; mse_loss mean over sequences and units.
  h_n  [L*D, batch, H], PyTorch's order (l0, l0_reverse, l1, ...): each sequence's final state.
  c_n  same shape, LSTM only (null otherwise).

Optimizer runs ("optim"), each from a fresh copy of the case's starting parameters, full
batch, the same batch every step, every parameter trainable (both biases):
  sgd       torch.optim.SGD(lr)
  momentum  torch.optim.SGD(lr, momentum=m)  (dampening 0, no nesterov: buf = m*buf + g, first buf = g)
  adam      torch.optim.Adam(lr)             (betas (0.9, 0.999), eps 1e-8, bias-corrected,
                                              weight_decay 0, amsgrad off)
  adamw     torch.optim.AdamW(lr, weight_decay=wd)  (the same, with decoupled weight decay:
                                              each step first scales every parameter,
                                              biases included, by 1 - lr*wd)
  clip      when not null, torch.nn.utils.clip_grad_norm_(params, clip) before each step:
            global L2 norm over all gradients; scale = clip / (norm + 1e-6) when that is < 1.
            Every sgd run has a clip below every step's gradient norm (so clipping is active
            at every step); "grad_norms" holds the pre-clip norms.
  "losses" holds the loss computed before each step's update; "params_after" the
  parameters after the last step.

Encoders ("encoders"): the recurrent module alone (unfold's Head::None), a random
gradient G on its padded top-layer states [B, T, D*H] (zero past each length); the loss
is sum(G * states), so autograd gives what unfold's backward(batch, G) returns: "grads"
(every recurrent parameter) and "input_grads" (each sequence's [len, input]). "optim":
SGD with an active clip and Adam, 3 steps each on that loss, as backward +
apply_gradients; "layers_after" holds the parameters after them.

Checkpoints ("checkpoints"): a module with submodules `rnn` (nn.RNN / nn.LSTM / nn.GRU,
batch_first) and `out` (nn.Linear), float32, default init, state_dict saved with
safetensors.torch.save_file (metadata {"format": "pt"}). Each entry holds the config the
test should use, a fixed batch, and PyTorch's outputs / h_n / c_n / loss for it (computed
in float64 from the stored float32 weights). The entry with "refused": true is an nn.LSTM
with proj_size > 0 (extra tensor rnn.weight_hr_l0, w_hh of shape [4H, proj]): loading it
must fail.

Data are chosen so that float32 arithmetic cannot flip a discrete decision: for relu cases,
every pre-activation along the forward pass and along every optimizer trajectory is at
least RELU_MARGIN away from 0 (and, at the start, 30-80% of them are positive and no unit
is dead); for adam runs, every
gradient element is exactly 0 or at least ADAM_GRAD_FLOOR times the largest one (Adam's
first steps are about sign(g)). A seed that fails is replaced by the next one (printed).
"""
import copy
import json
import math
import os
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from safetensors.torch import save_file

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "golden.json")

GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}
RELU_MARGIN = 1e-4
F32_MAX_REL = 1e-6
SIG_DIGITS = 10


def opt(optimizer, lr, clip=None, momentum=0.0, steps=3, weight_decay=0.0):
    return dict(optimizer=optimizer, lr=lr, momentum=momentum, clip=clip, steps=steps,
                weight_decay=weight_decay)


# clip="active": the largest "round" clip value below every step's gradient norm.
SGD = opt("sgd", 0.1, clip="active")
MOMENTUM = opt("momentum", 0.05, momentum=0.9)
ADAM = opt("adam", 0.02)
MOMENTUM_CLIPPED = opt("momentum", 0.05, momentum=0.9, clip="active")
ADAM_CLIPPED = opt("adam", 0.02, clip="active")
ADAM_CLIP_INACTIVE = opt("adam", 0.02, clip=100.0)
# AdamW: decoupled weight decay, large enough to matter over three steps
ADAMW = opt("adamw", 0.02, clip="active", weight_decay=0.5)


def case(name, cell, layers, bidirectional, head, target, lengths, seed, hidden=4,
         optim=(SGD, MOMENTUM, ADAM, ADAMW)):
    return dict(name=name, cell=cell, input_size=3, hidden_size=hidden, output_size=3,
                num_layers=layers, bidirectional=bidirectional, head=head, target=target,
                lengths=lengths, seed=seed, optim=list(optim))


CASES = [
    # tanh / relu, unidirectional: the coverage of the previous (folded-bias) golden set.
    case("tanh_1l_perstep_classes", "tanh", 1, False, "per_step", "classes", [5, 1, 3], 1),
    case("tanh_2l_perstep_classes", "tanh", 2, False, "per_step", "classes", [4, 1, 3], 2),
    case("tanh_1l_perstep_values", "tanh", 1, False, "per_step", "values", [3, 2, 1], 3, hidden=5,
         optim=(SGD, MOMENTUM_CLIPPED, ADAM)),
    case("tanh_2l_laststep_classes", "tanh", 2, False, "last_step", "classes", [1, 3, 2], 4),
    case("relu_1l_laststep_values", "relu", 1, False, "last_step", "values", [2, 5, 1], 5),
    # bidirectional tanh / relu
    case("tanh_2l_bi_perstep_values", "tanh", 2, True, "per_step", "values", [5, 1, 3], 6),
    case("tanh_1l_bi_laststep_classes", "tanh", 1, True, "last_step", "classes", [2, 5, 1], 7,
         hidden=5),
    case("relu_2l_bi_perstep_classes", "relu", 2, True, "per_step", "classes", [5, 3, 1], 8,
         hidden=5, optim=(SGD, MOMENTUM, ADAM_CLIPPED)),
    case("relu_1l_bi_laststep_values", "relu", 1, True, "last_step", "values", [1, 4, 5], 9),
    # LSTM
    case("lstm_1l_perstep_classes", "lstm", 1, False, "per_step", "classes", [5, 1, 3], 10),
    case("lstm_2l_bi_perstep_values", "lstm", 2, True, "per_step", "values", [4, 1, 5], 11,
         optim=(SGD, MOMENTUM, ADAM_CLIPPED)),
    case("lstm_1l_bi_laststep_classes", "lstm", 1, True, "last_step", "classes", [3, 5, 1], 12),
    case("lstm_2l_laststep_values", "lstm", 2, False, "last_step", "values", [1, 2, 5], 13),
    # GRU
    case("gru_1l_perstep_values", "gru", 1, False, "per_step", "values", [5, 2, 1], 14, hidden=5),
    case("gru_2l_bi_laststep_classes", "gru", 2, True, "last_step", "classes", [2, 1, 5], 15,
         optim=(SGD, MOMENTUM_CLIPPED, ADAM_CLIP_INACTIVE)),
    case("gru_1l_bi_perstep_classes", "gru", 1, True, "per_step", "classes", [1, 5, 4], 16),
    case("gru_2l_laststep_values", "gru", 2, False, "last_step", "values", [3, 1, 5], 17),
]

CHECKPOINTS = [
    dict(name="rnn_tanh_2l", file="ckpt_rnn_tanh.safetensors", cell="tanh", input_size=3,
         hidden_size=4, output_size=3, num_layers=2, bidirectional=False, head="per_step",
         target="classes", lengths=[4, 1, 5], seed=101),
    dict(name="lstm_1l", file="ckpt_lstm.safetensors", cell="lstm", input_size=3,
         hidden_size=5, output_size=3, num_layers=1, bidirectional=False, head="per_step",
         target="values", lengths=[5, 2, 1], seed=102),
    dict(name="gru_2l", file="ckpt_gru.safetensors", cell="gru", input_size=3,
         hidden_size=4, output_size=3, num_layers=2, bidirectional=False, head="last_step",
         target="classes", lengths=[3, 5, 1], seed=103),
    dict(name="lstm_2l_bi", file="ckpt_lstm_bi2.safetensors", cell="lstm", input_size=3,
         hidden_size=4, output_size=3, num_layers=2, bidirectional=True, head="per_step",
         target="classes", lengths=[1, 4, 5], seed=104),
]
# Encoders (Head::None): the recurrent layers alone, a given gradient on their top-layer
# states, and optimizer runs through that gradient (unfold's encode / backward /
# apply_gradients against autograd and torch.optim).
ENCODERS = [
    dict(name="encoder_lstm_2l_bi", cell="lstm", input_size=3, hidden_size=4, num_layers=2,
         bidirectional=True, lengths=[5, 1, 3], seed=201),
    dict(name="encoder_gru_1l", cell="gru", input_size=3, hidden_size=5, num_layers=1,
         bidirectional=False, lengths=[2, 4, 1], seed=202),
    dict(name="encoder_tanh_1l_bi", cell="tanh", input_size=3, hidden_size=4, num_layers=1,
         bidirectional=True, lengths=[1, 3, 5], seed=203),
]
ENCODER_RUNS = (opt("sgd", 0.1, clip="active"), opt("adam", 0.02))

PROJ_CHECKPOINT = dict(name="lstm_proj_refused", file="ckpt_lstm_proj.safetensors",
                       input_size=3, hidden_size=4, proj_size=2, output_size=3, seed=105)


class Reject(Exception):
    """The drawn data could let float32 rounding flip a discrete decision: redraw."""


# ---------------------------------------------------------------- number formatting

def f32_exact(t):
    """Nested lists of the float32 values of t, each in its shortest f32 round-trip form."""
    a = t.detach().to(torch.float32).numpy()
    flat = [float(str(np.float32(v))) for v in a.reshape(-1).tolist()]
    assert np.array_equal(np.array(flat, dtype=np.float64).astype(np.float32), a.reshape(-1)), \
        "f32 round trip"
    return np.array(flat, dtype=np.float64).reshape(a.shape).tolist()


def computed(t):
    """Nested lists of float64 results rounded to SIG_DIGITS significant digits."""
    a = t.detach().to(torch.float64).numpy()
    flat = [float(f"{v:.{SIG_DIGITS}g}") for v in a.reshape(-1).tolist()]
    return np.array(flat, dtype=np.float64).reshape(a.shape).tolist()


def scalar(x):
    return float(f"{float(torch.as_tensor(x).detach()):.{SIG_DIGITS}g}")


# ---------------------------------------------------------------- model

def rnn_module(cell, I, H, L, bidirectional, proj_size=0, dtype=torch.float32):
    kw = dict(num_layers=L, bidirectional=bidirectional, batch_first=True, dtype=dtype)
    if cell in ("tanh", "relu"):
        return torch.nn.RNN(I, H, nonlinearity=cell, **kw)
    if cell == "lstm":
        return torch.nn.LSTM(I, H, proj_size=proj_size, **kw)
    if cell == "gru":
        return torch.nn.GRU(I, H, **kw)
    raise ValueError(cell)


class Net(torch.nn.Module):
    """The module whose state_dict names match unfold's checkpoints: `rnn` and `out`."""

    def __init__(self, c, proj_size=0, dtype=torch.float32):
        super().__init__()
        D = 2 if c.get("bidirectional") else 1
        self.rnn = rnn_module(c.get("cell", "lstm"), c["input_size"], c["hidden_size"],
                              c.get("num_layers", 1), bool(c.get("bidirectional")),
                              proj_size=proj_size, dtype=dtype)
        self.out = torch.nn.Linear(D * (proj_size or c["hidden_size"]), c["output_size"],
                                   dtype=dtype)


def layer_names(c):
    sfx = ["", "_reverse"] if c["bidirectional"] else [""]
    return [f"l{k}{s}" for k in range(c["num_layers"]) for s in sfx]


def layer_tensors(model, n):
    r = model.rnn
    return dict(w_ih=getattr(r, f"weight_ih_{n}"), w_hh=getattr(r, f"weight_hh_{n}"),
                b_ih=getattr(r, f"bias_ih_{n}"), b_hh=getattr(r, f"bias_hh_{n}"))


def trainable(model, c):
    ps = []
    for n in layer_names(c):
        t = layer_tensors(model, n)
        ps += [t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"]]
    ps += [model.out.weight, model.out.bias]
    assert len(ps) == len(list(model.parameters()))
    return ps


def export(model, c, fmt, grads=False):
    g = (lambda p: p.grad) if grads else (lambda p: p)
    layers = []
    for n in layer_names(c):
        t = layer_tensors(model, n)
        layers.append(dict(name=n, **{k: fmt(g(v)) for k, v in t.items()}))
    return dict(layers=layers, w_out=fmt(g(model.out.weight)), b_out=fmt(g(model.out.bias)))


def pad(seqs):
    T = max(s.shape[0] for s in seqs)
    x = torch.zeros(len(seqs), T, seqs[0].shape[1], dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
    return x


def forward(model, c, seqs, targets):
    """PyTorch's packed forward: (outputs, h_n, c_n or None, loss)."""
    lengths = torch.tensor([s.shape[0] for s in seqs])
    T = int(lengths.max())
    packed = pack_padded_sequence(pad(seqs), lengths, batch_first=True, enforce_sorted=False)
    out_p, state = model.rnn(packed)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    if c["head"] == "per_step":
        h_top, _ = pad_packed_sequence(out_p, batch_first=True, total_length=T)  # [B, T, D*H]
        mask = torch.arange(T)[None, :] < lengths[:, None]
        logits = model.out(h_top)
        outputs = torch.where(mask[..., None], logits, torch.zeros((), dtype=logits.dtype))
        sel = logits[mask]  # [valid, O], row-major (sequence, step)
        if c["target"] == "classes":
            loss = F.cross_entropy(sel, torch.cat([torch.tensor(t) for t in targets]))
        else:
            loss = F.mse_loss(sel, torch.cat(targets))
    else:
        D = 2 if c["bidirectional"] else 1
        top = torch.cat([h_n[h_n.shape[0] - D + d] for d in range(D)], dim=1)  # [B, D*H]
        o = model.out(top)
        outputs = o[:, None, :]
        if c["target"] == "classes":
            loss = F.cross_entropy(o, torch.tensor([t[0] for t in targets]))
        else:
            loss = F.mse_loss(o, torch.cat(targets))
    return outputs, h_n, c_n, loss


def manual_forward(model, c, seqs):
    """The same recurrences written out step by step (an independent check of the packed
    path). Returns (top-layer outputs per sequence, h_n, c_n, relu pre-activations as
    (layer * D + direction, [H]) pairs)."""
    H, L = c["hidden_size"], c["num_layers"]
    D = 2 if c["bidirectional"] else 1
    B = len(seqs)
    h_n = torch.zeros(L * D, B, H, dtype=torch.float64)
    c_n = torch.zeros(L * D, B, H, dtype=torch.float64)
    pre, tops = [], []
    with torch.no_grad():
        for b, s in enumerate(seqs):
            inp, T = s, s.shape[0]
            for k in range(L):
                outs = []
                for d in range(D):
                    p = layer_tensors(model, f"l{k}" + ("_reverse" if d else ""))
                    h = torch.zeros(H, dtype=torch.float64)
                    cc = torch.zeros(H, dtype=torch.float64)
                    hs = [None] * T
                    for t in (range(T) if d == 0 else reversed(range(T))):
                        gi = p["w_ih"] @ inp[t] + p["b_ih"]
                        gh = p["w_hh"] @ h + p["b_hh"]
                        if c["cell"] == "tanh":
                            h = torch.tanh(gi + gh)
                        elif c["cell"] == "relu":
                            a = gi + gh
                            pre.append((k * D + d, a))
                            h = torch.relu(a)
                        elif c["cell"] == "lstm":
                            i, f, g, o = (gi + gh).split(H)
                            cc = torch.sigmoid(f) * cc + torch.sigmoid(i) * torch.tanh(g)
                            h = torch.sigmoid(o) * torch.tanh(cc)
                        else:
                            ir, iz, i_n = gi.split(H)
                            hr, hz, h_n_ = gh.split(H)
                            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                            n = torch.tanh(i_n + r * h_n_)
                            h = (1 - z) * n + z * h
                        hs[t] = h
                    outs.append(torch.stack(hs))
                    h_n[k * D + d, b], c_n[k * D + d, b] = h, cc
                inp = torch.cat(outs, dim=1)
            tops.append(inp)
    return tops, h_n, (c_n if c["cell"] == "lstm" else None), pre


def check_against_manual(model, c, seqs, outputs, h_n, c_n):
    tops, mh, mc, _ = manual_forward(model, c, seqs)
    assert torch.allclose(h_n, mh, rtol=0, atol=1e-12), c["name"]
    if c_n is not None:
        assert torch.allclose(c_n, mc, rtol=0, atol=1e-12), c["name"]
    with torch.no_grad():
        for b, top in enumerate(tops):
            if c["head"] == "per_step":
                want = model.out(top)
                got = outputs[b, : top.shape[0]]
                assert torch.count_nonzero(outputs[b, top.shape[0]:]) == 0
            else:
                D = 2 if c["bidirectional"] else 1
                Lk = mh.shape[0]
                want = model.out(torch.cat([mh[Lk - D + d, b] for d in range(D)]))[None]
                got = outputs[b]
            assert torch.allclose(got, want, rtol=0, atol=1e-12), c["name"]


def relu_check(model, c, seqs, where, mix=False):
    """Every relu pre-activation at least RELU_MARGIN from 0; with mix, 30-80% of them
    positive and every unit of every layer and direction on at some valid step."""
    if c["cell"] != "relu":
        return None
    _, _, _, pre = manual_forward(model, c, seqs)
    a = torch.stack([v for _, v in pre])
    margin = float(a.abs().min())
    if margin < RELU_MARGIN:
        raise Reject(f"{where}: relu pre-activation {margin:.2e} from 0")
    if mix:
        frac = float((a > 0).double().mean())
        if not 0.3 <= frac <= 0.8:
            raise Reject(f"{where}: relu positive fraction {frac:.2f}")
        for ld in sorted({k for k, _ in pre}):
            on = torch.stack([v for k, v in pre if k == ld]) > 0  # [valid steps, H]
            if not on.any(0).all():
                raise Reject(f"{where}: a relu unit of layer/direction {ld} is never on")
        return frac
    return None


def draw_data(c, gen_seed):
    torch.manual_seed(gen_seed)
    seqs = [torch.randn(n, c["input_size"]).double() for n in c["lengths"]]
    O = c["output_size"]
    if c["target"] == "classes":
        if c["head"] == "per_step":
            targets = [torch.randint(0, O, (n,)).tolist() for n in c["lengths"]]
        else:
            targets = [[int(torch.randint(0, O, (1,)))] for _ in c["lengths"]]
        targets_json = dict(classes=targets)
    else:
        rows = [(n if c["head"] == "per_step" else 1) for n in c["lengths"]]
        targets = [torch.randn(r, O).double() for r in rows]
        targets_json = dict(values=[f32_exact(t) for t in targets])
    return seqs, targets, targets_json


def config_json(c):
    return dict(input_size=c["input_size"], hidden_size=c["hidden_size"],
                output_size=c["output_size"], num_layers=c["num_layers"], cell=c["cell"],
                head=c["head"], bidirectional=c["bidirectional"], dropout=0.0)


def grad_norm(ps):
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ps)))


def run_optimizer(model, c, seqs, targets, o, clip, checks=True):
    m = copy.deepcopy(model)
    ps = trainable(m, c)
    if o["optimizer"] == "sgd":
        opt_ = torch.optim.SGD(ps, lr=o["lr"])
    elif o["optimizer"] == "momentum":
        opt_ = torch.optim.SGD(ps, lr=o["lr"], momentum=o["momentum"])
    elif o["optimizer"] == "adamw":
        opt_ = torch.optim.AdamW(ps, lr=o["lr"], weight_decay=o["weight_decay"])
    else:
        opt_ = torch.optim.Adam(ps, lr=o["lr"])
    losses, norms = [], []
    for step in range(o["steps"]):
        if checks:
            relu_check(m, c, seqs, f"{o['optimizer']} step {step}")
        opt_.zero_grad(set_to_none=True)
        _, _, _, loss = forward(m, c, seqs, targets)
        loss.backward()
        losses.append(float(loss.detach()))
        norms.append(grad_norm(ps))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ps, clip)
        opt_.step()
    if checks:
        relu_check(m, c, seqs, f"{o['optimizer']} after {o['steps']} steps")
    return m, losses, norms


def round_down(x):
    """The largest number of the form d * 10^e (d in 1..9) at most x."""
    e = math.floor(math.log10(x))
    return float(f"{math.floor(x / 10 ** e)}e{e}")


def rel_error(got, want):
    """The Rust test's metric: ||got - want|| / max(||want||, 1e-6) over one tensor."""
    got = torch.as_tensor(got).detach().double().reshape(-1)
    want = torch.as_tensor(want).detach().double().reshape(-1)
    return float((got - want).norm()) / max(float(want.norm()), 1e-6)


def named_tensors(model, c, grads=False):
    out = []
    for n in layer_names(c):
        for k, v in layer_tensors(model, n).items():
            out.append((f"{n}.{k}", v.grad if grads else v))
    return out + [("w_out", model.out.weight.grad if grads else model.out.weight),
                  ("b_out", model.out.bias.grad if grads else model.out.bias)]


def float32_agreement(model, c, seqs, targets, ref, runs):
    """The largest rel_error of the same computation in PyTorch float32 against the
    float64 results, over every tensor the test compares, and where it is."""
    m32 = copy.deepcopy(model).float()
    seqs32 = [s.float() for s in seqs]
    targets32 = targets if c["target"] == "classes" else [t.float() for t in targets]
    errs = []
    outputs, h_n, c_n, loss = forward(m32, c, seqs32, targets32)
    loss.backward()
    errs += [(rel_error(outputs, ref["outputs"]), "outputs"), (rel_error(h_n, ref["h_n"]), "h_n"),
             (rel_error(loss, ref["loss"]), "loss")]
    if c_n is not None:
        errs.append((rel_error(c_n, ref["c_n"]), "c_n"))
    errs += [(rel_error(g, w), f"grad {n}") for (n, g), (_, w)
             in zip(named_tensors(m32, c, grads=True), named_tensors(ref["model"], c, grads=True))]
    for o, clip, m64, losses64 in runs:
        m, losses, _ = run_optimizer(m32, c, seqs32, targets32, o, clip, checks=False)
        label = o["optimizer"]
        errs.append((rel_error(losses, losses64), f"{label} losses"))
        errs += [(rel_error(g, w), f"{label} {n}") for (n, g), (_, w)
                 in zip(named_tensors(m, c), named_tensors(m64, c))]
    return max(errs)


def make_case_once(c, attempt):
    torch.manual_seed(c["seed"] * 1000 + attempt)
    model = Net(c)
    with torch.no_grad():
        for n in layer_names(c):
            t = layer_tensors(model, n)
            t["b_ih"].uniform_(-0.5, 0.5)
            t["b_hh"].uniform_(-0.5, 0.5)
        model.out.bias.uniform_(-0.5, 0.5)
    model = model.double()  # exact: every value is a float32
    seqs, targets, targets_json = draw_data(c, c["seed"] * 1000 + attempt + 500)
    frac = relu_check(model, c, seqs, "start", mix=True)

    out = dict(name=c["name"], config=config_json(c), lengths=c["lengths"],
               inputs=[f32_exact(s) for s in seqs], targets=targets_json,
               params=export(model, c, f32_exact))

    m = copy.deepcopy(model)
    outputs, h_n, c_n, loss = forward(m, c, seqs, targets)
    check_against_manual(m, c, seqs, outputs, h_n, c_n)
    loss.backward()
    ref = dict(model=m, outputs=outputs, h_n=h_n, c_n=c_n, loss=loss)
    out["expected"] = dict(outputs=computed(outputs), h_n=computed(h_n),
                           c_n=None if c_n is None else computed(c_n), loss=scalar(loss),
                           grads=export(m, c, computed, grads=True))

    runs, done = [], []
    for o in c["optim"]:
        clip = o["clip"]
        if clip == "active":
            # a clip below every step's norm: start from half the first norm, and lower it
            # until the whole trajectory stays clipped.
            _, _, norms = run_optimizer(model, c, seqs, targets, o, None)
            clip = round_down(0.5 * norms[0])
            while True:
                _, _, norms = run_optimizer(model, c, seqs, targets, o, clip)
                if min(norms) > 1.2 * clip:
                    break
                clip = round_down(0.9 * clip)
        m, losses, norms = run_optimizer(model, c, seqs, targets, o, clip)
        done.append((o, clip, m, losses))
        run = dict(optimizer=o["optimizer"], lr=o["lr"], momentum=o["momentum"], clip=clip,
                   steps=o["steps"], losses=[scalar(v) for v in losses],
                   grad_norms=[scalar(v) for v in norms], params_after=export(m, c, computed))
        if o["optimizer"] in ("adam", "adamw"):
            run.update(betas=[0.9, 0.999], eps=1e-8, weight_decay=o["weight_decay"])
        runs.append(run)
    out["optim"] = runs

    err, where = float32_agreement(model, c, seqs, targets, ref, done)
    if err > F32_MAX_REL:
        raise Reject(f"PyTorch float32 differs by {err:.1e} in {where}")
    out["f32_rel_error"] = float(f"{err:.2g}")
    out["f32_worst"] = where
    return out, frac


def make_case(c):
    for attempt in range(200):
        try:
            out, frac = make_case_once(c, attempt)
        except Reject as e:
            print(f"  {c['name']}: seed attempt {attempt} rejected ({e})")
            continue
        extra = f", relu positive fraction {frac:.2f}" if frac is not None else ""
        print(f"  {c['name']}: seed attempt {attempt}{extra}; f32 error {out['f32_rel_error']:.1e}"
              f" ({out['f32_worst']}); loss {out['expected']['loss']:.6f}; "
              + "; ".join(f"{r['optimizer']} clip {r['clip']} {['%.5f' % v for v in r['losses']]}"
                          for r in out["optim"]))
        return out
    raise SystemExit(f"{c['name']}: no acceptable seed")


def state_dict_f32(model):
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in sd.values())
    return sd


def make_checkpoint(c):
    torch.manual_seed(c["seed"])
    model = Net(c)  # float32, PyTorch's default init (both biases random and different)
    path = os.path.join(HERE, c["file"])
    save_file(state_dict_f32(model), path, metadata={"format": "pt"})
    names = sorted(model.state_dict().keys())
    ref = copy.deepcopy(model).double()
    seqs, targets, targets_json = draw_data(c, c["seed"] + 500)
    with torch.no_grad():
        outputs, h_n, c_n, loss = forward(ref, c, seqs, targets)
    check_against_manual(ref, c, seqs, outputs, h_n, c_n)
    print(f"  {c['file']}: {len(names)} tensors, loss {float(loss):.6f}")
    return dict(name=c["name"], file=c["file"], refused=False, config=config_json(c),
                tensors=names, lengths=c["lengths"], inputs=[f32_exact(s) for s in seqs],
                targets=targets_json,
                expected=dict(outputs=computed(outputs), h_n=computed(h_n),
                              c_n=None if c_n is None else computed(c_n), loss=scalar(loss)))


def make_proj_checkpoint(c):
    torch.manual_seed(c["seed"])
    model = Net(dict(c, cell="lstm"), proj_size=c["proj_size"])
    save_file(state_dict_f32(model), os.path.join(HERE, c["file"]), metadata={"format": "pt"})
    names = sorted(model.state_dict().keys())
    assert "rnn.weight_hr_l0" in names
    print(f"  {c['file']}: {len(names)} tensors (proj_size {c['proj_size']}, must be refused)")
    return dict(name=c["name"], file=c["file"], refused=True,
                reason=f"nn.LSTM with proj_size={c['proj_size']} (tensor rnn.weight_hr_l0; "
                       f"weight_hh_l0 is [4H, proj]): unfold has no projection",
                tensors=names)


def encoder_states(model, c, seqs):
    """The top layer's states [B, T, D*H], zero past each length, and (h_n, c_n)."""
    lengths = torch.tensor([s.shape[0] for s in seqs])
    packed = pack_padded_sequence(pad(seqs), lengths, batch_first=True, enforce_sorted=False)
    out_p, state = model.rnn(packed)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    states, _ = pad_packed_sequence(out_p, batch_first=True, total_length=int(lengths.max()))
    return states, h_n, c_n


def encoder_run(model, c, seqs, grad_states, o, clip):
    """Optimizer steps on the loss sum(grad_states * states), as unfold's backward with
    that gradient followed by apply_gradients; returns the model and the pre-clip norms."""
    m = copy.deepcopy(model)
    ps = trainable(m, c)[:-2]  # the recurrent layers: an encoder has no readout
    opt_ = (torch.optim.SGD(ps, lr=o["lr"]) if o["optimizer"] == "sgd"
            else torch.optim.Adam(ps, lr=o["lr"]))
    norms = []
    for _ in range(o["steps"]):
        opt_.zero_grad(set_to_none=True)
        states, _, _ = encoder_states(m, c, seqs)
        (grad_states * states).sum().backward()
        norms.append(grad_norm(ps))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ps, clip)
        opt_.step()
    return m, norms


def make_encoder(c):
    c = dict(c, output_size=1, head="none")
    torch.manual_seed(c["seed"])
    model = Net(c)
    with torch.no_grad():
        for n in layer_names(c):
            t = layer_tensors(model, n)
            t["b_ih"].uniform_(-0.5, 0.5)
            t["b_hh"].uniform_(-0.5, 0.5)
    model = model.double()
    torch.manual_seed(c["seed"] + 500)
    seqs = [torch.randn(n, c["input_size"]).float().double().requires_grad_() for n in c["lengths"]]
    D = 2 if c["bidirectional"] else 1
    T = max(c["lengths"])
    grad_states = torch.randn(len(seqs), T, D * c["hidden_size"]).float().double()
    for i, n in enumerate(c["lengths"]):
        grad_states[i, n:] = 0.0
    m = copy.deepcopy(model)
    states, h_n, c_n = encoder_states(m, c, seqs)
    (grad_states * states).sum().backward()
    params = export(model, c, f32_exact)
    grads = [dict(name=n, **{k: computed(v.grad) for k, v in layer_tensors(m, n).items()})
             for n in layer_names(c)]
    # read now: the optimizer runs below accumulate into the inputs' gradients too
    input_grads = [computed(s.grad) for s in seqs]
    runs = []
    for o in ENCODER_RUNS:
        clip = o["clip"]
        if clip == "active":
            _, norms = encoder_run(model, c, seqs, grad_states, o, None)
            clip = round_down(0.5 * norms[0])
            while min(encoder_run(model, c, seqs, grad_states, o, clip)[1]) <= 1.2 * clip:
                clip = round_down(0.9 * clip)
        after, norms = encoder_run(model, c, seqs, grad_states, o, clip)
        runs.append(dict(optimizer=o["optimizer"], lr=o["lr"], clip=clip, steps=o["steps"],
                         grad_norms=[scalar(v) for v in norms],
                         layers_after=export(after, c, computed)["layers"]))
    print(f"  {c['name']}: " + "; ".join(f"{r['optimizer']} clip {r['clip']}" for r in runs))
    return dict(name=c["name"], config=dict(config_json(c), output_size=0),
                lengths=c["lengths"], inputs=[f32_exact(s) for s in seqs],
                grad_states=f32_exact(grad_states), layers=params["layers"],
                expected=dict(states=computed(states), h_n=computed(h_n),
                              c_n=None if c_n is None else computed(c_n),
                              grads=grads,
                              input_grads=input_grads),
                optim=runs)


def main():
    cases = [make_case(c) for c in CASES]
    encoders = [make_encoder(c) for c in ENCODERS]
    ckpts = [make_checkpoint(c) for c in CHECKPOINTS] + [make_proj_checkpoint(PROJ_CHECKPOINT)]
    doc = {"generated_by": "tests/golden/make_golden.py", "torch": torch.__version__,
           "dtype": "float64", "significant_digits": SIG_DIGITS, "cases": cases,
           "encoders": encoders, "checkpoints": ckpts}
    text = json.dumps(doc, indent=1)
    # keep innermost lists of numbers on one line so the file stays readable
    text = re.sub(r"\[[^\[\]{}\"]*\]",
                  lambda mo: re.sub(r"\s+", " ", mo.group(0)).replace("[ ", "[").replace(" ]", "]"),
                  text)
    with open(OUT, "w") as f:
        f.write(text + "\n")
    print(f"wrote {OUT}: {len(cases)} cases, {len(ckpts)} checkpoints, {len(text) + 1} bytes")


if __name__ == "__main__":
    main()
