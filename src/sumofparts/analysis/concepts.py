"""The job of ``sop concepts``: a task's concepts, TCAV on its backbone, the tables and figures, and (with
an SOP checkpoint) TCAV beside SOP's weights for the concepts that are kinds of SOP groups."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..formats import csv_text

__all__ = ["run_concepts"]


def run_concepts(task_name: str, out_dir: Path, *, checkpoint: Path | None = None, weights: str | None = None,
                 backbone: str | None = None, layers: Sequence[str] | None = None, n_random: int = 20,
                 set_size: int = 50, n_probe: int | None = None, targets: Sequence[int] | None = None,
                 alpha: float = 0.05, seed: int = 0, size: str = "default", cache_dir: Path | None = None,
                 batch_size: int = 64, case_study_n: int | None = None, progress: bool = True,
                 command: str | None = None) -> dict[str, Any]:
    """Build the task's concepts, run TCAV on the chosen backbone, write the tables and figures,
    and (with an SOP ``checkpoint``) the TCAV-vs-SOP comparison. Returns the written dict."""
    from ..io import atomic_write_json, atomic_write_text
    from ..report.figures import save_figure
    from ..tasks import default_cache_dir, get_task
    from .compare import resolve_model
    from .tcav import TCAV
    from .tcav_report import TCAV_COLUMNS, tcav_figure, tcav_markdown

    if checkpoint is not None and weights is not None:
        raise InputError("give either --checkpoint (an SOP model's backbone) or --weights, not both")
    task = get_task(task_name)
    cache_dir = Path(cache_dir or default_cache_dir())
    data = task.load_data(cache_dir, size=size, seed=seed, progress=progress)
    sop = None
    if checkpoint is not None:
        from ..model import SumOfParts

        sop = SumOfParts.from_pretrained(checkpoint)
        sop.eval()
        adapter, model_label = sop.backbone, f"the frozen backbone of the SOP checkpoint {checkpoint}"
    else:
        spec = weights or "backbone"
        if spec.startswith("generator:"):
            raise InputError("TCAV needs a model with outputs: the generator's encoder copy has none; use "
                             "--checkpoint DIR for the SOP model's backbone")
        view = resolve_model(spec, task, data, cache_dir, backbone=backbone)
        adapter, model_label = view.adapter, view.label
    options: dict[str, Any] = {"seed": seed, "pool_size": n_random * set_size, "random_size": 2 * n_random * set_size}
    if n_probe is not None:
        options["n_probe"] = n_probe
    sets = task.concept_sets(data, adapter, **options)
    tcav = TCAV(adapter, layers, n_random=n_random, set_size=set_size, alpha=alpha, seed=seed, batch_size=batch_size,
                progress=progress)
    result = tcav.interpret(sets, targets)
    out_dir = Path(out_dir)
    save_figure(tcav_figure(result, sets), out_dir / "concepts", close=True)
    atomic_write_text(out_dir / "concepts.csv", csv_text(result.rows(), TCAV_COLUMNS))
    written = result.to_dict() | {
        "task": task_name, "model": model_label, "command": command,
        "concepts": [{"name": c.name, "description": c.description, "size": c.size, "random_family": c.random_family,
                      "sop_kind": c.sop_kind} for c in sets.concepts],
        "random_pools": {f: {"description": p.description, "size": p.size} for f, p in sets.randoms.items()},
        "notes": sets.notes, "significant": result.rows(only_significant=True)}
    atomic_write_text(out_dir / "concepts.md", tcav_markdown(result, sets, title=f"TCAV: {task_name}",
                                                             model=model_label, command=command,
                                                             figure="concepts.png"))
    if sop is not None and any(c.sop_kind for c in sets.concepts):
        written["tcav_vs_sop"] = _join(sop, data, sets, result, out_dir, n=case_study_n, seed=seed, command=command)
    elif sop is not None:
        written["tcav_vs_sop"] = None
        written["notes"] = list(written["notes"]) + [f"no concept of {task_name} names a kind of SOP group: "
                                                     "no TCAV-vs-SOP comparison"]
    atomic_write_json(out_dir / "concepts.json", written)
    written["result"], written["sets"] = result, sets
    return written


def _join(sop, data, sets, result, out_dir: Path, *, n: int | None, seed: int, command: str | None) -> dict[str, Any]:
    from ..io import atomic_write_json, atomic_write_text
    from ..report.case_study import run_case_study
    from ..report.figures import save_figure
    from .tcav_report import tcav_vs_sop, tcav_vs_sop_figure, tcav_vs_sop_markdown

    case = run_case_study(sop, data, out_dir / "case_study", n=n, seed=seed, command=command)
    join = tcav_vs_sop(result, sets, case)
    join["case_study"] = {"n_maps": case["n_maps"], "verdict": case["verdict"], "path": str(out_dir / "case_study")}
    save_figure(tcav_vs_sop_figure(join), out_dir / "tcav_vs_sop", close=True)
    atomic_write_json(out_dir / "tcav_vs_sop.json", join)
    atomic_write_text(out_dir / "tcav_vs_sop.md", tcav_vs_sop_markdown(join, command=command, figure="tcav_vs_sop.png"))
    return join
