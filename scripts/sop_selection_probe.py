"""How much a trained classification SOP gets from its selector: its own groups weighed four ways.

    HF_HUB_OFFLINE=1 python scripts/sop_selection_probe.py RUN/sop/best --task sentiment [--split test] [--n 0]
        [--input-scales 0.03,0.1]

For every item of the split the checkpoint's G groups are made once and scored by the frozen
backbone; the same group logits are then combined as

* ``sop``: SOP's own prediction (sparsemax weights w and scales c);
* ``uniform``: the plain mean of the G group logits (a selector that weighs every group alike);
* ``uniform_scaled``: the mean of c_i · y_i (the generator's scales, no selector);
* ``vote``: the majority of the G groups' predicted classes (ties count as wrong);
* ``any_group_right``: at least one group alone predicts the label (what a perfect selector of a
  single group could reach);
* ``whole``: the backbone on the whole input;
* ``agrees_with_whole``: SOP predicts the class the backbone predicts on the whole input;
* ``sop_error_class_k`` / ``whole_error_class_k``: the error on the items of class k alone (one
  class's error can hide behind a good average).
* ``input_dot_S`` (for each S of ``--input-scales``): the G groups weighed, for every class alike, by
  ``sparsemax_i(S · <z_x, z_i>)`` with ``z_x`` the backbone's embedding of the whole input and
  ``z_i`` group i's, times ``c_i · y_i``: an untrained selector that trusts the groups the backbone
  reads most like the whole input (what ``SOPConfig.selector_input_scale`` lets a selector learn).

If ``sop`` is no better than ``uniform``, the learned weights add nothing to the groups' average;
``any_group_right`` bounds what a better selection could add. docs/results.md (sentiment) quotes
the output.
"""
from __future__ import annotations

import argparse
import json

import torch
from entmax import sparsemax

from sumofparts import SumOfParts
from sumofparts.errors import ConfigError
from sumofparts.tasks import default_cache_dir, get_task
from sumofparts.training.sop import iterate_batches


@torch.no_grad()
def probe(sop: SumOfParts, dataset, *, batch_size: int = 32,
          input_scales: tuple[float, ...] = ()) -> dict[str, float]:
    """The accuracies listed in the module docs on ``dataset`` (items ``(inputs, label)``)."""
    if sop.config.task != "classification":
        raise ConfigError(f"the selection probe needs a classification SOP, got task {sop.config.task!r}")
    sop.eval()
    right = dict.fromkeys(("sop", "uniform", "uniform_scaled", "vote", "any_group_right", "whole",
                           "agrees_with_whole"), 0)
    right.update({f"input_dot_{t:g}": 0 for t in input_scales})
    total = 0
    C = sop.num_outputs
    per_class = torch.zeros(3, C)  # items, SOP wrong, backbone wrong
    for _, (x, y) in iterate_batches(dataset, batch_size, seed=None):
        out = sop(x, validate=False)
        logits, scale = out.group_logits, out.scale.unsqueeze(-1)  # (B, G, C), (B, G, 1)
        group_pred = logits.argmax(-1)  # (B, G)
        votes = torch.nn.functional.one_hot(group_pred, logits.shape[-1]).sum(1)  # (B, C)
        label_votes = votes.gather(1, y.view(-1, 1)).squeeze(1)
        vote_ok = label_votes > votes.scatter(1, y.view(-1, 1), -1).max(1).values  # the label strictly ahead
        right["sop"] += int((out.logits.argmax(-1) == y).sum())
        right["uniform"] += int((logits.mean(1).argmax(-1) == y).sum())
        right["uniform_scaled"] += int(((scale * logits).mean(1).argmax(-1) == y).sum())
        right["vote"] += int(vote_ok.sum())
        right["any_group_right"] += int((group_pred == y.view(-1, 1)).any(1).sum())
        whole_logits, z_x = sop.backbone.forward_with_embedding(x)
        whole = whole_logits.argmax(-1)
        if input_scales:
            _, z = sop.backbone.forward_groups(x, out.masks)
            similarity = (z * z_x[:, None, :]).sum(-1)  # (B, G)
            for t in input_scales:
                w = sparsemax(t * similarity, dim=1).unsqueeze(-1)  # (B, G, 1)
                right[f"input_dot_{t:g}"] += int(((w * scale * logits).sum(1).argmax(-1) == y).sum())
        pred = out.logits.argmax(-1)
        right["whole"] += int((whole == y).sum())
        right["agrees_with_whole"] += int((pred == whole).sum())
        for row, wrong in enumerate((torch.ones_like(y, dtype=torch.bool), pred != y, whole != y)):
            per_class[row] += torch.bincount(y[wrong], minlength=C)[:C].float()
        total += len(y)
    errors = {}
    for k in range(C):
        n_k = float(per_class[0, k])
        errors[f"sop_error_class_{k}"] = float(per_class[1, k]) / n_k if n_k else float("nan")
        errors[f"whole_error_class_{k}"] = float(per_class[2, k]) / n_k if n_k else float("nan")
    return {**{k: v / total for k, v in right.items()}, **errors, "n": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a saved SOP directory (e.g. RUN/sop/best)")
    ap.add_argument("--task", required=True, help="the task whose data the checkpoint was trained on")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--n", type=int, default=0, help="the first N items of the split (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--input-scales", default="", help="comma-separated S for the input_dot_S rows (e.g. 0.03,0.1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sop = SumOfParts.from_pretrained(args.checkpoint)
    data = get_task(args.task).load_data(default_cache_dir(), progress=False)
    dataset = getattr(data, args.split)
    if args.n:
        # the sentiment dataset keeps its own subset (sentences and tokens); any other, a torch Subset
        dataset = (dataset.subset(args.n) if hasattr(dataset, "subset")
                   else torch.utils.data.Subset(dataset, range(min(args.n, len(dataset)))))
    scales = tuple(float(t) for t in args.input_scales.split(",") if t.strip())
    result = probe(sop, dataset, input_scales=scales)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
