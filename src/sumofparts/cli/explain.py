"""``sop explain CKPT --task T --index i``: the groups of one test item, as a table."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .arguments import NONNEGATIVE_INT, POSITIVE_INT, set_threads

__all__ = ["register"]


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..model import SumOfParts
    from ..tasks import default_cache_dir, get_task

    set_threads(args.threads)
    sop = SumOfParts.from_pretrained(args.checkpoint)
    task = get_task(args.task)
    data = task.load_data(args.cache_dir or default_cache_dir(), size=args.size, seed=args.seed,
                          progress=not args.no_progress)
    if not 0 <= args.index < len(data.test):
        raise ConfigError(f"--index must be in [0, {len(data.test)}), got {args.index}")
    x, y = data.test[args.index]
    batch = {k: v.unsqueeze(0) for k, v in x.items()} if isinstance(x, dict) else x.unsqueeze(0)
    target = args.target
    if target is None and sop.config.task == "regression":
        target = 0
    expl = sop.explain(batch, target=target)
    t = int(expl.target[0])
    print(f"test item {args.index}: label {y.tolist()}, SOP output {expl.logits[0].tolist()}, "
          f"explaining output {t} ({data.output_names[t]})")
    print(f"{'group':>5} {'weight':>8} {'c':>7} {'logit':>8} {'share':>8} {'predicts':>12}  cells")
    for g in expl.groups(0, target=t):
        flag = "  (zero weight)" if g.zero_weight else ""
        print(f"{g.index:5d} {g.weight:8.4f} {g.scale:7.3f} {g.logit:8.3f} {g.attribution:8.3f} "
              f"{data.output_names[g.predicted]:>12}  {g.cells}{flag}")
    print(f"sum of shares = {float(expl.group_attributions[0, :, t].sum()):.6f} = output "
          f"{float(expl.logits[0, t]):.6f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sop explain`` to the ``sop`` command."""
    p = sub.add_parser("explain", help="list the groups of a trained SOP model for one test item")
    p.add_argument("checkpoint", type=Path, help="an SOP checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--task", required=True, help="the task the model was trained on")
    p.add_argument("--index", type=NONNEGATIVE_INT, default=0, help="test item (default: %(default)s)")
    p.add_argument("--target", type=NONNEGATIVE_INT, default=None,
                   help="output to explain (default: the predicted class)")
    p.add_argument("--size", default="default")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--threads", type=POSITIVE_INT, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_explain)
