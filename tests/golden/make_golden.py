"""Generate tests/golden/golden.json: reference forward / loss / gradient / optimizer
numbers for `unfold`, computed with PyTorch (float32 modules, CPU, single thread).

Run from the repository root:  /work/venv/bin/python tests/golden/make_golden.py

Model per case: torch.nn.RNN(I, H, L, nonlinearity, batch_first=True) + torch.nn.Linear(H, O).
The library has one bias per layer, b = bias_ih + bias_hh; here bias_hh_l{k} is fixed at
zero with requires_grad=False, so b == bias_ih, grad(b) == grad(bias_ih), and gradient
clipping's global norm does not see bias_hh.

Variable lengths go through pack_padded_sequence(enforce_sorted=False), initial state zero.
  per_step  head: o(t) = Linear(h_top(t)) at every valid step (zeros stored past each length).
                  classes: cross_entropy, mean over all valid (sequence, step) positions.
                  values:  mse_loss, mean over all valid positions and output units.
  last_step head: o = Linear(h_top at each sequence's last valid step) = Linear(h_n[-1]),
                  stored as [batch, 1, output].
                  classes: one class per sequence ([[c], ...]), cross_entropy mean over sequences.
                  values:  one [1, output] target per sequence, mse_loss mean over sequences
                           and output units.
Optimizers (each from a fresh copy of the case's params, full batch, same batch every step):
  sgd      torch.optim.SGD(lr)
  momentum torch.optim.SGD(lr, momentum=m)   (dampening 0, no nesterov: buf = m*buf + g, first buf = g)
  adam     torch.optim.Adam(lr)              (betas (0.9, 0.999), eps 1e-8, bias-corrected)
  clip     torch.nn.utils.clip_grad_norm_(params, clip) before step when not null
           (global L2 norm over all trainable grads; scale = clip / (norm + 1e-6) if < 1).
"losses" holds the loss computed before each step's update.
"""
import copy
import json
import os
import re

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.json")

CASES = [
    dict(name="tanh_2layer_perstep_classes", input_size=3, hidden_size=4, output_size=5,
         num_layers=2, nonlinearity="tanh", head="per_step", target="classes",
         lengths=[4, 1, 3], seed=1,
         optim=[dict(optimizer="sgd", lr=0.1, momentum=0.0, clip=0.5, steps=3),
                dict(optimizer="momentum", lr=0.05, momentum=0.9, clip=None, steps=3),
                dict(optimizer="adam", lr=0.01, momentum=0.0, clip=1.0, steps=4)]),
    dict(name="relu_1layer_laststep_values", input_size=2, hidden_size=3, output_size=2,
         num_layers=1, nonlinearity="relu", head="last_step", target="values",
         lengths=[2, 5, 1, 3], seed=2,
         optim=[dict(optimizer="adam", lr=0.02, momentum=0.0, clip=None, steps=3),
                dict(optimizer="sgd", lr=0.1, momentum=0.0, clip=0.1, steps=2)]),
    dict(name="tanh_1layer_perstep_values", input_size=3, hidden_size=5, output_size=2,
         num_layers=1, nonlinearity="tanh", head="per_step", target="values",
         lengths=[3, 2, 1], seed=3,
         optim=[dict(optimizer="momentum", lr=0.1, momentum=0.5, clip=1.0, steps=3)]),
    dict(name="tanh_2layer_laststep_classes", input_size=4, hidden_size=3, output_size=3,
         num_layers=2, nonlinearity="tanh", head="last_step", target="classes",
         lengths=[1, 3, 2], seed=4,
         optim=[dict(optimizer="sgd", lr=0.2, momentum=0.0, clip=None, steps=2)]),
]


def tl(t):
    """Tensor -> nested lists of Python floats holding the exact float32 values."""
    return t.detach().to(torch.float32).tolist()


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.L = c["num_layers"]
        self.rnn = torch.nn.RNN(c["input_size"], c["hidden_size"], c["num_layers"],
                                nonlinearity=c["nonlinearity"], batch_first=True)
        self.out = torch.nn.Linear(c["hidden_size"], c["output_size"])
        with torch.no_grad():
            for k in range(self.L):
                getattr(self.rnn, f"bias_ih_l{k}").uniform_(-0.5, 0.5)
                bhh = getattr(self.rnn, f"bias_hh_l{k}")
                bhh.zero_()
                bhh.requires_grad_(False)
            self.out.bias.uniform_(-0.5, 0.5)

    def trainable(self):
        ps = []
        for k in range(self.L):
            ps += [getattr(self.rnn, f"weight_ih_l{k}"), getattr(self.rnn, f"weight_hh_l{k}"),
                   getattr(self.rnn, f"bias_ih_l{k}")]
        return ps + [self.out.weight, self.out.bias]

    def export(self, grads=False):
        g = (lambda p: p.grad) if grads else (lambda p: p)
        layers = [dict(w_ih=tl(g(getattr(self.rnn, f"weight_ih_l{k}"))),
                       w_hh=tl(g(getattr(self.rnn, f"weight_hh_l{k}"))),
                       b=tl(g(getattr(self.rnn, f"bias_ih_l{k}"))))
                  for k in range(self.L)]
        return dict(layers=layers, w_out=tl(g(self.out.weight)), b_out=tl(g(self.out.bias)))


def pad(seqs):
    T = max(s.shape[0] for s in seqs)
    x = torch.zeros(len(seqs), T, seqs[0].shape[1], dtype=torch.float32)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
    return x


def forward(model, c, seqs, targets):
    lengths = torch.tensor([s.shape[0] for s in seqs])
    T = int(lengths.max())
    x = pad(seqs)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_p, h_n = model.rnn(packed)
    if c["head"] == "per_step":
        h_top, _ = pad_packed_sequence(out_p, batch_first=True, total_length=T)
        mask = torch.arange(T)[None, :] < lengths[:, None]  # [B, T]
        logits = model.out(h_top)                              # [B, T, O]
        outputs = logits * mask[..., None].to(logits.dtype)    # zeros past each length
        sel = logits[mask]                                     # [N_valid, O], row-major (b, t)
        if c["target"] == "classes":
            y = torch.cat([torch.tensor(t, dtype=torch.long) for t in targets])
            loss = F.cross_entropy(sel, y)
        else:
            y = torch.cat([t for t in targets])
            loss = F.mse_loss(sel, y)
    else:
        o = model.out(h_n[-1])                                 # [B, O]
        outputs = o[:, None, :]
        if c["target"] == "classes":
            y = torch.tensor([t[0] for t in targets], dtype=torch.long)
            loss = F.cross_entropy(o, y)
        else:
            y = torch.cat([t for t in targets])                # [B, O]
            loss = F.mse_loss(o, y)
    return outputs, h_n, loss


def relu_positive_fraction(model, seqs):
    """Fraction of valid pre-activations > 0 (all layers), and per-unit min count."""
    with torch.no_grad():
        pos, tot, per_unit = 0, 0, None
        for s in seqs:
            inp = s
            for k in range(model.L):
                w_ih = getattr(model.rnn, f"weight_ih_l{k}")
                w_hh = getattr(model.rnn, f"weight_hh_l{k}")
                b = getattr(model.rnn, f"bias_ih_l{k}")
                h = torch.zeros(w_hh.shape[0])
                hs = []
                for t in range(inp.shape[0]):
                    a = w_ih @ inp[t] + w_hh @ h + b
                    pos += int((a > 0).sum()); tot += a.numel()
                    u = (a > 0).long()
                    per_unit = u if per_unit is None else per_unit + u
                    h = torch.relu(a)
                    hs.append(h)
                inp = torch.stack(hs)
        return pos / tot, int(per_unit.min())


def make_case(c):
    attempt = 0
    while True:
        torch.manual_seed(c["seed"] * 1000 + attempt)
        model = Model(c)
        seqs = [torch.randn(n, c["input_size"]) for n in c["lengths"]]
        if c["nonlinearity"] != "relu":
            break
        frac, min_unit = relu_positive_fraction(model, seqs)
        if 0.4 <= frac <= 0.8 and min_unit >= 2:
            break
        attempt += 1
    O = c["output_size"]
    if c["target"] == "classes":
        if c["head"] == "per_step":
            targets = [torch.randint(0, O, (n,)).tolist() for n in c["lengths"]]
        else:
            targets = [[int(torch.randint(0, O, (1,)))] for _ in c["lengths"]]
        targets_json = dict(classes=targets)
    else:
        if c["head"] == "per_step":
            targets = [torch.randn(n, O) for n in c["lengths"]]
        else:
            targets = [torch.randn(1, O) for _ in c["lengths"]]
        targets_json = dict(values=[tl(t) for t in targets])

    case = dict(name=c["name"], input_size=c["input_size"], hidden_size=c["hidden_size"],
                output_size=O, num_layers=c["num_layers"], nonlinearity=c["nonlinearity"],
                head=c["head"], params=model.export(), inputs=[tl(s) for s in seqs],
                targets=targets_json)

    m = copy.deepcopy(model)
    outputs, h_n, loss = forward(m, c, seqs, targets)
    loss.backward()
    case["expected"] = dict(outputs=tl(outputs), final_hidden=tl(h_n), loss=float(loss.detach()),
                            grads=m.export(grads=True))
    if c["nonlinearity"] == "relu":
        frac, _ = relu_positive_fraction(model, seqs)
        print(f"  {c['name']}: relu positive pre-activation fraction {frac:.2f} (seed attempt {attempt})")

    runs = []
    for o in c["optim"]:
        m = copy.deepcopy(model)
        ps = m.trainable()
        if o["optimizer"] == "sgd":
            opt = torch.optim.SGD(ps, lr=o["lr"])
        elif o["optimizer"] == "momentum":
            opt = torch.optim.SGD(ps, lr=o["lr"], momentum=o["momentum"])
        else:
            opt = torch.optim.Adam(ps, lr=o["lr"])
        losses = []
        for _ in range(o["steps"]):
            opt.zero_grad(set_to_none=True)
            _, _, loss = forward(m, c, seqs, targets)
            loss.backward()
            losses.append(float(loss.detach()))
            if o["clip"] is not None:
                torch.nn.utils.clip_grad_norm_(ps, o["clip"])
            opt.step()
        for k in range(m.L):  # bias_hh must still be exactly zero
            assert torch.count_nonzero(getattr(m.rnn, f"bias_hh_l{k}")) == 0
        runs.append(dict(optimizer=o["optimizer"], lr=o["lr"], momentum=o["momentum"],
                         clip=o["clip"], steps=o["steps"], losses=losses,
                         params_after=m.export()))
    case["optim"] = runs
    return case


def main():
    cases = [make_case(c) for c in CASES]
    doc = {"generated_by": "tests/golden/make_golden.py", "torch": torch.__version__, "cases": cases}
    text = json.dumps(doc, indent=1)
    # keep innermost lists of numbers on one line so the file stays readable
    text = re.sub(r"\[[^\[\]{}\"]*\]", lambda mo: re.sub(r"\s+", " ", mo.group(0)).replace("[ ", "[").replace(" ]", "]"), text)
    with open(OUT, "w") as f:
        f.write(text + "\n")
    for c in cases:
        print(f"  {c['name']}: loss {c['expected']['loss']:.6f}; "
              + "; ".join(f"{o['optimizer']} {['%.5f' % l for l in o['losses']]}" for o in c["optim"]))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
