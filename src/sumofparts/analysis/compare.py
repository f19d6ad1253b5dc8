"""Layer-by-layer similarity of two models on the same inputs (``sop compare``).

A *model view* is something with named layers that can run on a task's inputs:

* ``backbone`` — the task's trained backbone (the committed weights, or the cached ones);
* ``FILE.safetensors`` — the task's backbone architecture with the weights of that file (a
  fine-tune, another seed: :meth:`sumofparts.tasks.Task.load_backbone_weights`);
* ``DIR`` — the frozen backbone inside an SOP checkpoint directory;
* ``generator:DIR`` — the generator's trainable encoder copy inside an SOP checkpoint, its layers
  named like the backbone's (:meth:`BackboneAdapter.encoder_layers`): how far did training move
  the copy away from the backbone, layer by layer?

:func:`compare_models` reads every layer of both views on the same n inputs and fills one
``(layers of A) × (layers of B)`` matrix per metric of :mod:`.similarity`. The *diagonal* pairs
the layers with the same name (before/after a fine-tune, two seeds, backbone vs its copy).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters.base import BackboneAdapter, Inputs
from . import similarity as S
from .layers import layer_activations, select_layers
from ..errors import InputError, MissingFileError
from ..formats import csv_text

__all__ = ["ModelView", "resolve_model", "task_inputs", "SimilarityMatrix", "Comparison", "compare_models",
           "comparison_markdown", "heatmap_figure", "diagonal_figure", "pca_figure", "run_compare"]


@dataclass
class ModelView:
    """A model whose named layers can be read on a task's inputs.

    ``adapter`` batches the inputs (and is the model, for a backbone); ``forward`` runs the model
    whose modules ``layers`` are (``None``: the backbone itself); ``label`` names it in tables.
    """

    label: str
    spec: str
    adapter: BackboneAdapter
    layers: dict[str, nn.Module]
    forward: Callable[[Inputs], Any] | None = None

    def activations(self, inputs: Inputs, names: Sequence[str] | None = None, *, batch_size: int = 64,
                    progress: bool = False) -> dict[str, torch.Tensor]:
        layers = select_layers(self.layers, names)
        self.adapter.eval()
        if self.forward is not None and isinstance(self.forward, nn.Module):
            self.forward.eval()
        return layer_activations(self.adapter, layers, inputs, forward=self.forward, batch_size=batch_size,
                                 progress=progress, desc=f"activations: {self.label}")


def resolve_model(spec: str, task, data, cache_dir: Path, *, backbone: str | None = None) -> ModelView:
    """The :class:`ModelView` of ``spec`` (see the module docstring) for ``task`` and its ``data``."""
    from ..model import SumOfParts

    spec = str(spec)
    if spec in ("backbone", "committed"):
        model = task.load_backbone(data, cache_dir, backbone=backbone, train_if_missing=False, progress=False)
        adapter = task.make_adapter(model)
        return ModelView(f"{task.name} backbone", spec, adapter, adapter.named_layers())
    if spec.startswith("generator:"):
        path = Path(spec[len("generator:"):])
        sop = SumOfParts.from_pretrained(path)
        sop.eval()
        layers = sop.backbone.encoder_layers(sop.generator.encoder)
        if not layers:
            raise InputError(f"the generator of {path} has no encoder copy of its backbone to compare "
                             f"({type(sop.backbone).__name__})")
        return ModelView(f"SOP generator copy ({path.name if path.name not in ('best', 'last') else path})", spec,
                         sop.backbone, layers, forward=sop.generator.encoder)
    path = Path(spec)
    if path.is_dir():
        sop = SumOfParts.from_pretrained(path)
        sop.eval()
        return ModelView(f"SOP backbone ({path})", spec, sop.backbone, sop.backbone.named_layers())
    if path.suffix == ".safetensors" or path.is_file():
        if not path.is_file():
            raise MissingFileError(f"no weights file at {path}")
        model = task.load_backbone_weights(data, cache_dir, path, backbone=backbone)
        adapter = task.make_adapter(model)
        return ModelView(f"{task.name} backbone ({path.name})", spec, adapter, adapter.named_layers())
    raise MissingFileError(f"model {spec!r}: expected 'backbone', a .safetensors weights file, an SOP checkpoint "
                            "directory, or generator:DIR (an SOP checkpoint's generator copy); nothing exists at "
                            f"{path}")


def task_inputs(data, n: int, split: str = "test") -> tuple[Inputs, torch.Tensor]:
    """The first ``n`` inputs of a split and their targets (class indices, or ``(n, T)`` values)."""
    dataset = getattr(data, split)
    n = min(int(n), len(dataset))
    if n < 3:
        raise InputError(f"need at least 3 inputs to compare representations, got {n}")
    items = [dataset[i] for i in range(n)]
    xs, ys = [it[0] for it in items], torch.stack([torch.as_tensor(it[1]) for it in items])
    if isinstance(xs[0], dict):
        return {k: torch.stack([x[k] for x in xs]) for k in xs[0]}, ys
    return torch.stack(xs), ys


@dataclass
class SimilarityMatrix:
    """``values[i, j]`` = metric(layer ``rows[i]`` of A, layer ``cols[j]`` of B); NaN where undefined."""

    metric: str
    rows: list[str]
    cols: list[str]
    values: np.ndarray

    def get(self, row: str, col: str) -> float:
        return float(self.values[self.rows.index(row), self.cols.index(col)])

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "rows": self.rows, "cols": self.cols,
                "values": [[None if math.isnan(v) else float(v) for v in row] for row in self.values]}


@dataclass
class Comparison:
    """Every metric's layer-by-layer matrix for models ``a`` and ``b`` on ``n`` inputs."""

    a: str
    b: str
    a_spec: str
    b_spec: str
    n: int
    metrics: list[str]
    matrices: dict[str, SimilarityMatrix]
    features: dict[str, dict[str, int]]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def same_model(self) -> bool:
        return self.a_spec == self.b_spec

    def diagonal(self) -> list[dict[str, Any]]:
        """One row per layer name the two models share: ``{"layer", metric: value, ...}``."""
        first = next(iter(self.matrices.values()))
        shared = [r for r in first.rows if r in first.cols]
        return [{"layer": r, **{m: mat.get(r, r) for m, mat in self.matrices.items()}} for r in shared]

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "a_spec": self.a_spec, "b_spec": self.b_spec, "n": self.n,
                "metrics": self.metrics, "metric_descriptions": {m: S.METRICS[m] for m in self.metrics},
                "matrices": {m: mat.to_dict() for m, mat in self.matrices.items()},
                "diagonal": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                             for row in self.diagonal()],
                "features": self.features, "settings": self.settings, "seconds": self.seconds}


def compare_models(a: ModelView, b: ModelView | None, inputs: Inputs, *, layers_a: Sequence[str] | None = None,
                   layers_b: Sequence[str] | None = None, metrics: Sequence[str] = tuple(S.METRICS),
                   sigma: float = 0.8, keep_variance: float = 0.99, max_dims: int | None = None,
                   batch_size: int = 64, progress: bool = True,
                   activations: tuple[dict, dict] | None = None) -> Comparison:
    """Fill one similarity matrix per metric between the layers of ``a`` and of ``b`` (``None``: ``a``
    with itself) on the same ``inputs``. ``activations``: precomputed ``(acts_a, acts_b)``."""
    t0 = time.perf_counter()
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in S.METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; expected some of {', '.join(S.METRICS)}")
    if activations is None:
        acts_a = a.activations(inputs, layers_a, batch_size=batch_size, progress=progress)
        acts_b = acts_a if b is None and layers_b is None else (b or a).activations(
            inputs, layers_b, batch_size=batch_size, progress=progress)
    else:
        acts_a, acts_b = activations
    b = b or a
    na, nb = {len(v) for v in acts_a.values()}, {len(v) for v in acts_b.values()}
    if len(na | nb) != 1:
        raise InputError(f"the two models' representations hold different numbers of examples "
                         f"({sorted(na)} and {sorted(nb)}); they must be read on the same inputs")
    n = na.pop()
    kw: dict[str, Any] = {"sigma": sigma, "keep_variance": keep_variance, "max_dims": max_dims}
    prepared: dict[int, S.Prepared] = {}
    bar = tqdm(total=len(acts_a) + (0 if acts_b is acts_a else len(acts_b)), desc="kernels and SVDs", unit="layer",
               disable=not progress, leave=False)

    def prep(x: torch.Tensor) -> S.Prepared:
        if id(x) not in prepared:
            prepared[id(x)] = S.prepare(x, metrics, **kw)
            bar.update()
        return prepared[id(x)]

    pa = {k: prep(v) for k, v in acts_a.items()}
    pb = {k: prep(v) for k, v in acts_b.items()}
    bar.close()
    matrices = {}
    for m in metrics:
        vals = np.array([[S.similarity(pa[r], pb[c], m) for c in pb] for r in pa], dtype=np.float64)
        matrices[m] = SimilarityMatrix(m, list(pa), list(pb), vals)
    return Comparison(a=a.label, b=b.label, a_spec=a.spec, b_spec=b.spec, n=n, metrics=metrics, matrices=matrices,
                      features={"a": {k: int(v.shape[1]) for k, v in acts_a.items()},
                                "b": {k: int(v.shape[1]) for k, v in acts_b.items()}},
                      settings={**kw, "max_dims_used": max(1, n // 10) if max_dims is None else max_dims},
                      seconds=time.perf_counter() - t0)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "N/A"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def comparison_markdown(comp: Comparison, *, command: str | None = None, figures: Sequence[str] = ()) -> str:
    """The diagonal table (same-named layers) and every full matrix, as Markdown."""
    lines = [f"# Model comparison: {comp.a} vs {comp.b}", "",
             f"{comp.n} inputs; A = `{comp.a_spec}`, B = `{comp.b_spec}`. Metrics: "
             + "; ".join(f"**{m}**: {S.METRICS[m]}" for m in comp.metrics) + ".", ""]
    diag = comp.diagonal()
    if diag and not comp.same_model:
        lines += ["## Same layer in both models", "", "| layer | features | " + " | ".join(comp.metrics) + " |",
                  "|---|---|" + "---|" * len(comp.metrics)]
        for row in diag:
            lines.append(f"| {row['layer']} | {comp.features['a'][row['layer']]} | "
                         + " | ".join(_fmt(row[m]) for m in comp.metrics) + " |")
        lines.append("")
    for m, mat in comp.matrices.items():
        lines += [f"## {m}: {S.METRICS[m]} (rows: A, columns: B)", "",
                  "| A \\ B | " + " | ".join(mat.cols) + " |", "|---|" + "---|" * len(mat.cols)]
        for i, r in enumerate(mat.rows):
            lines.append(f"| {r} | " + " | ".join(_fmt(float(v)) for v in mat.values[i]) + " |")
        lines.append("")
    for f in figures:
        lines += [f"![{Path(f).stem}]({f})", ""]
    if command:
        lines += [f"Command: `{command}` ({comp.seconds:.0f} s for the similarities)", ""]
    return "\n".join(lines)


def heatmap_figure(comp: Comparison):
    """One heat map per metric: rows = layers of A, columns = layers of B, colour 0..1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(comp.matrices)
    first = next(iter(comp.matrices.values()))
    cell = 0.3
    w = max(3.2, cell * len(first.cols) + 1.6)
    h = max(2.8, cell * len(first.rows) + 1.4)
    ncols = min(3, k)
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 1.0, h * nrows), layout="constrained", squeeze=False)
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    for ax, (m, mat) in zip(axes.flat, comp.matrices.items()):
        im = ax.imshow(np.ma.masked_invalid(mat.values), vmin=0, vmax=1, cmap="magma", origin="lower", aspect="auto")
        ax.set_xticks(range(len(mat.cols)), [_short(c) for c in mat.cols], rotation=90, fontsize=7)
        ax.set_yticks(range(len(mat.rows)), [_short(r) for r in mat.rows], fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel(f"B: {comp.b}", fontsize=7)
        ax.set_ylabel(f"A: {comp.a}", fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="similarity")
    return fig


def diagonal_figure(comp: Comparison):
    """Similarity of each layer with the same layer of the other model, one line per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diag = comp.diagonal()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * len(diag) + 2), 3.4), layout="constrained")
    x = np.arange(len(diag))
    for m in comp.metrics:
        ax.plot(x, [row[m] for row in diag], marker="o", label=m)
    ax.set_xticks(x, [_short(r["layer"]) for r in diag], rotation=60, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("similarity (same layer)")
    ax.set_title(f"{comp.a} vs {comp.b}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=min(5, len(comp.metrics)))
    return fig


def pca_figure(embeddings: dict[str, torch.Tensor], targets: torch.Tensor, *, target_names: Sequence[str],
               kind: str, layer: str):
    """PCA of a layer's embeddings, one panel per model: the first two principal directions,
    each point an input coloured by its class (or by its first regression target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(embeddings), figsize=(4.4 * len(embeddings), 4.0), layout="constrained",
                             squeeze=False)
    y = targets.numpy()
    for ax, (label, emb) in zip(axes[0], embeddings.items()):
        scores, share = S.pca(emb, 2)
        if kind == "classification":
            cmap = plt.get_cmap("tab10")
            for c in np.unique(y):
                sel = y == c
                ax.scatter(scores[sel, 0], scores[sel, 1], s=6, color=cmap(int(c) % 10),
                           label=str(target_names[int(c)]) if int(c) < len(target_names) else str(c))
        else:
            values = y[:, 0] if y.ndim > 1 else y
            sc = ax.scatter(scores[:, 0], scores[:, 1], s=6, c=values, cmap="viridis")
            fig.colorbar(sc, ax=ax, label=str(target_names[0]))
        ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({share[1]:.0%})")
        ax.set_title(f"{label}\n{layer}", fontsize=8)
    if kind == "classification":
        axes[0][-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _short(name: str) -> str:
    return name.replace("encoder.layer.", "L").replace("layers.", "L").replace("bert.", "").replace("vit.", "")


# -- the job of ``sop compare`` ----------------------------------------------------------------------
def _matrix_csv(mat) -> str:
    rows = [{"layer": r, **{c: float(v) for c, v in zip(mat.cols, mat.values[i])}} for i, r in enumerate(mat.rows)]
    return csv_text(rows, ["layer", *mat.cols])


def run_compare(task_name: str, a: str, b: str | None, out_dir: Path, *, n: int = 500, metrics=None,
                layers_a=None, layers_b=None, pca_layer: str | None = None, backbone: str | None = None,
                size: str = "default", seed: int = 0, cache_dir: Path | None = None, batch_size: int = 64,
                progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Load the task's data and the two models, compare them on the first ``n`` test inputs and
    write the tables and figures (see the module docstring); returns the comparison's dict."""
    from ..io import atomic_write_json, atomic_write_text
    from ..report.figures import save_figure
    from ..tasks import default_cache_dir, get_task

    task = get_task(task_name)
    cache_dir = Path(cache_dir or default_cache_dir())
    data = task.load_data(cache_dir, size=size, seed=seed, progress=progress)
    view_a = resolve_model(a, task, data, cache_dir, backbone=backbone)
    view_b = None if b is None or b == a else resolve_model(b, task, data, cache_dir, backbone=backbone)
    if pca_layer is not None and pca_layer not in view_a.layers and (view_b is None or pca_layer not in view_b.layers):
        raise InputError(f"--pca-layer {pca_layer!r} is not a layer of the compared models: {', '.join(view_a.layers)}")
    inputs, targets = task_inputs(data, n)
    acts_a = view_a.activations(inputs, layers_a, batch_size=batch_size, progress=progress)
    if view_b is None and layers_b is None:
        acts_b = acts_a
    else:
        acts_b = (view_b or view_a).activations(inputs, layers_b, batch_size=batch_size, progress=progress)
    comp = compare_models(view_a, view_b, inputs, metrics=metrics or list(S.METRICS), progress=progress,
                          activations=(acts_a, acts_b))
    out_dir = Path(out_dir)
    figures = []
    save_figure(heatmap_figure(comp), out_dir / "compare_heatmaps", close=True)
    figures.append("compare_heatmaps.png")
    if view_b is not None and comp.diagonal():
        save_figure(diagonal_figure(comp), out_dir / "compare_diagonal", close=True)
        figures.append("compare_diagonal.png")
    shared = [k for k in acts_a if k in acts_b]
    layer = pca_layer or (shared[-1] if shared else list(acts_a)[-1])
    embeddings = {}
    if layer in acts_a:
        embeddings[f"A: {comp.a}"] = acts_a[layer]
    if view_b is not None and layer in acts_b:
        embeddings[f"B: {comp.b}"] = acts_b[layer]
    if not embeddings:
        raise InputError(f"--pca-layer {layer!r} is not among the compared layers: {', '.join(acts_a)} (choose it "
                         "with --layers-a / --layers-b too)")
    save_figure(pca_figure(embeddings, targets, target_names=data.output_names, kind=data.kind, layer=layer),
                out_dir / "pca", close=True)
    figures.append("pca.png")
    result = comp.to_dict() | {"task": task_name, "command": command, "pca_layer": layer, "figures": figures,
                               "inputs": f"the first {comp.n} test inputs of {task_name} ({size}, seed {seed})"}
    for m, mat in comp.matrices.items():
        atomic_write_text(out_dir / f"compare_{m}.csv", _matrix_csv(mat))
    atomic_write_json(out_dir / "compare.json", result)
    atomic_write_text(out_dir / "compare.md", comparison_markdown(comp, command=command, figures=figures))
    result["comparison"] = comp
    return result
