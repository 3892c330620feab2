#!/usr/bin/env python3
"""Synthetic variable-length classification tasks as UEA/UCR `.ts` files, for checking
`unfold classify` on long sequences of one channel (see BENCHMARKS.md, "classify beyond
JapaneseVowels"). Standard library only; the same arguments write the same files.

Tasks (one channel each; lengths uniform in [--min-len, --max-len]):

  early-event  Gaussian noise (sd 1) with one short event of 12 steps placed uniformly in
               the first 10% of the sequence; the event's shape is the class:
               up-down (+2 x6, -2 x6), down-up (-2 x6, +2 x6) or
               up-down-up (+2 x3, -2 x6, +2 x3). Every shape sums to zero and has the same
               energy, so nothing after the event, nor the sequence's mean or variance,
               tells the classes apart: the class must be remembered (or, reading the
               sequence backwards, found) across hundreds of steps of noise.
  frequency    a sine of random phase and amplitude (0.5 to 1.5) in Gaussian noise
               (sd 1); the class is its period: about 10, 14 or 20 steps (each +-5%).

Usage:
  python3 scripts/make_synthetic_ts.py --task early-event --out /tmp/synth
      [--train 600] [--test 600] [--min-len 300] [--max-len 1000] [--seed 0]
writes /tmp/synth/EarlyEvent_TRAIN.ts and /tmp/synth/EarlyEvent_TEST.ts, for
  unfold classify --train /tmp/synth/EarlyEvent_TRAIN.ts --test /tmp/synth/EarlyEvent_TEST.ts
"""

import argparse
import math
import os
import random

EVENTS = {
    "up-down": [2.0] * 6 + [-2.0] * 6,
    "down-up": [-2.0] * 6 + [2.0] * 6,
    "up-down-up": [2.0] * 3 + [-2.0] * 6 + [2.0] * 3,
}
PERIODS = {"p10": 10.0, "p14": 14.0, "p20": 20.0}


def early_event(rng, label, length):
    x = [rng.gauss(0.0, 1.0) for _ in range(length)]
    event = EVENTS[label]
    start = rng.randrange(0, max(1, length // 10 - len(event)))
    for k, v in enumerate(event):
        x[start + k] += v
    return x


def frequency(rng, label, length):
    period = PERIODS[label] * rng.uniform(0.95, 1.05)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    amplitude = rng.uniform(0.5, 1.5)
    return [
        amplitude * math.sin(2.0 * math.pi * t / period + phase) + rng.gauss(0.0, 1.0)
        for t in range(length)
    ]


TASKS = {
    "early-event": ("EarlyEvent", list(EVENTS), early_event),
    "frequency": ("Frequency", list(PERIODS), frequency),
}


def write(path, name, labels, cases):
    with open(path, "w") as f:
        f.write(f"# synthetic, written by scripts/make_synthetic_ts.py\n")
        f.write(f"@problemName {name}\n@timeStamps false\n@missing false\n")
        f.write("@univariate true\n@dimensions 1\n@equalLength false\n")
        f.write(f"@classLabel true {' '.join(labels)}\n@data\n")
        for label, x in cases:
            f.write(",".join(f"{v:.3f}" for v in x) + f":{label}\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--out", required=True, help="directory for NAME_TRAIN.ts and NAME_TEST.ts")
    p.add_argument("--train", type=int, default=600, help="training sequences")
    p.add_argument("--test", type=int, default=600, help="test sequences")
    p.add_argument("--min-len", type=int, default=300)
    p.add_argument("--max-len", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not 20 <= a.min_len <= a.max_len:
        p.error("need 20 <= --min-len <= --max-len")
    name, labels, make = TASKS[a.task]
    os.makedirs(a.out, exist_ok=True)
    for part, count, offset in (("TRAIN", a.train, 0), ("TEST", a.test, 1)):
        # the test file has its own stream: no sequence is in both files
        rng = random.Random(f"{a.task}/{a.seed}/{offset}")
        cases = []
        for i in range(count):
            label = labels[i % len(labels)]
            cases.append((label, make(rng, label, rng.randint(a.min_len, a.max_len))))
        rng.shuffle(cases)
        path = os.path.join(a.out, f"{name}_{part}.ts")
        write(path, name, labels, cases)
        print(f"{path}: {count} sequences of {a.min_len}..={a.max_len} steps")


if __name__ == "__main__":
    main()
