"""Each baseline through the project / the same method called plainly through Captum.

    python benchmarks/bench_baselines.py [--threads 2] [--batch 4] [--repeats 3] [--model synthetic|fashion]

"Plainly" means Captum's class with its default settings, as a user would first call
it: perturbation methods treat every pixel as a feature (no feature mask) and run one
perturbation per forward (perturbations_per_eval=1); sampling methods use Captum's
default sample counts. The project's methods use the model's cells as features and
batch the perturbations. The ratio is project time / Captum time, measured in one run
on the same model and inputs (target: <= 1).
"""
from __future__ import annotations

import argparse
import warnings

import torch

from _timing import timeit


def load(model_name: str):
    from sumofparts.tasks import default_cache_dir, get_task

    task = get_task(model_name)
    data = task.load_data(default_cache_dir(), size="small", progress=False)
    model = task.load_backbone(data, default_cache_dir(), progress=False)
    adapter = task.make_adapter(model)
    return adapter, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="synthetic", help="task whose backbone is explained (synthetic | fashion)")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of the methods (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    import captum.attr as ca

    from sumofparts.attribution import get_method

    adapter, data = load(args.model)
    x = torch.stack([data.test[i][0] for i in range(args.batch)])
    target = adapter(x).argmax(-1)
    fwd = adapter.forward
    plain = {
        "saliency": lambda: ca.Saliency(fwd).attribute(x, target=target),
        "gradxinput": lambda: ca.InputXGradient(fwd).attribute(x, target=target),
        "intgrad": lambda: ca.IntegratedGradients(fwd).attribute(x, target=target),
        "smoothgrad": lambda: ca.NoiseTunnel(ca.Saliency(fwd)).attribute(x, target=target, nt_type="smoothgrad"),
        "feature_ablation": lambda: ca.FeatureAblation(fwd).attribute(x, target=target),
        "kernelshap": lambda: ca.KernelShap(fwd).attribute(x, target=target),
        "lime": lambda: ca.Lime(fwd).attribute(x, target=target),
        "shapley": lambda: ca.ShapleyValueSampling(fwd).attribute(x, target=target, n_samples=5),
    }
    print(f"model={args.model} batch={args.batch} threads={args.threads} repeats={args.repeats} (median times)")
    print("| method | project (s) | plain Captum (s) | ratio |")
    print("|---|---|---|---|")
    for name, call in plain.items():
        if args.methods and name not in args.methods:
            continue
        method = get_method(name, adapter)
        t_project = timeit(lambda: method.attribute(x, target=target), args.repeats)
        t_captum = timeit(call, args.repeats)
        print(f"| {name} | {t_project:.3f} | {t_captum:.3f} | {t_project / t_captum:.2f} |")


if __name__ == "__main__":
    main()
