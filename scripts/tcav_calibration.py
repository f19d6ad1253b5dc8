#!/usr/bin/env python
"""How often does TCAV's t-test call a *random* concept significant? Two designs, measured.

    python scripts/tcav_calibration.py [--reps 10] [--n-random 20] [--set-size 20]

A small model whose behaviour is known by construction (the planted model of
``tests/analysis/test_tcav.py``: output 0 grows with features 0-4, output 1 is a product of
features 5-14 whose gradient changes sign from input to input) is probed with concepts that are
*random* (drawn from the same distribution as the random examples). Under the null hypothesis a
test at level 0.05 should reject about 5 % of the time. Per repetition and random concept, both
layers and both outputs are tested (raw p-values, before any multiple-testing correction):

* **disjoint sets** (``sumofparts.analysis.tcav.TCAV``): the concept pool and the random pool are
  cut into disjoint sets; concept set i vs counterpart i, random concept i vs counterpart i;
* **fixed sets** (the original TCAV code and Captum's tutorial): one concept set against R random
  counterparts, and one fixed random set against the same counterparts as the null.

A planted concept (features 0-4 raised by 1) is run too: the rate at which each design finds it
for output 0 (power). Prints a Markdown table; one BLAS thread.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from sumofparts.analysis.layers import layer_activations, layer_gradients, select_layers
from sumofparts.analysis.tcav import (TCAV, ConceptSet, ConceptSets, _welch, directional_derivatives, fit_cav,
                                      tcav_scores)
from sumofparts.adapters import TabularAdapter

D = 20


class Features(nn.Module):
    def forward(self, h):
        return torch.cat([nn.functional.softplus(h[:, :5]), h[:, 5:10] * h[:, 10:15]], dim=1)


class Planted(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(D, D)
        self.act = Features()
        self.head = nn.Linear(10, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(D))
            self.hidden.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[0, :5] = 1
            self.head.weight[1, 5:10] = 1
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.act(self.hidden(x)))


def fixed_design(adapter, concept: torch.Tensor, randoms: list[torch.Tensor], probes: dict, layer: str,
                 seed: int) -> dict[int, float]:
    """p-values of the fixed-set design: concept vs random_1..R, null random_0 vs random_1..R."""
    layers = select_layers(adapter.named_layers(), [layer])
    acts = [layer_activations(adapter, layers, x)[layer].numpy() for x in [concept, *randoms]]
    c, r0, rs = acts[0], acts[1], acts[2:]
    cavs = np.stack([fit_cav(c, r, seed=seed + i).vector for i, r in enumerate(rs)])
    null = np.stack([fit_cav(r0, r, seed=seed + 100 + i).vector for i, r in enumerate(rs)])
    out = {}
    for k, x in probes.items():
        g = layer_gradients(adapter, layers, x, k)[0][layer].numpy()
        out[k] = _welch(tcav_scores(directional_derivatives(g, cavs))[0],
                        tcav_scores(directional_derivatives(g, null))[0])[1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--concepts", type=int, default=4, help="random concepts per repetition")
    ap.add_argument("--n-random", type=int, default=20)
    ap.add_argument("--set-size", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    adapter = TabularAdapter(Planted().eval(), num_features=D, classifier="head")
    R, n = args.n_random, args.set_size
    rejections = {"disjoint": [], "fixed": []}
    power = {"disjoint": [], "fixed": []}
    t0 = time.perf_counter()
    with threadpool_limits(1):
        for rep in range(args.reps):
            g = torch.Generator().manual_seed(rep)

            def rnd(m: int) -> torch.Tensor:
                return torch.randn(m, D, generator=g)

            planted = rnd(R * n)
            planted[:, :5] += 1.0
            concepts = [ConceptSet("planted", planted)] + [ConceptSet(f"random-{j}", rnd(R * n))
                                                           for j in range(args.concepts)]
            sets = ConceptSets(concepts=concepts, randoms={"random": ConceptSet("random", rnd(2 * R * n))},
                               probes={0: rnd(60), 1: rnd(60)}, output_names=["a", "b"])
            res = TCAV(adapter, n_random=R, set_size=n, seed=rep, progress=False).interpret(sets)
            for t in res.tests:
                if t.concept == "planted":
                    if t.target == 0:
                        power["disjoint"].append(t.p_value < 0.05)
                else:
                    rejections["disjoint"].append(t.p_value < 0.05)
            fixed_randoms = [rnd(n) for _ in range(R + 1)]
            for c in concepts:
                for layer in ("hidden", "act"):
                    ps = fixed_design(adapter, c.inputs[:n], fixed_randoms, sets.probes, layer, seed=rep * 1000)
                    if c.name == "planted":
                        power["fixed"].append(ps[0] < 0.05)
                    else:
                        rejections["fixed"].extend(p < 0.05 for p in ps.values())
    print(f"{args.reps} repetitions x {args.concepts} random concepts x 2 layers x 2 outputs; R = {R}, sets of {n}; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| design | random concepts called significant (raw p < 0.05) | planted concept found (output 0) |")
    print("|---|---|---|")
    for d in ("disjoint", "fixed"):
        print(f"| {d} sets | {np.mean(rejections[d]):.1%} of {len(rejections[d])} | "
              f"{np.mean(power[d]):.0%} of {len(power[d])} |")


if __name__ == "__main__":
    main()
