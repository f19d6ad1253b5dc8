"""Concepts that the offline tasks make themselves, for TCAV (``sop concepts``).

Every concept is a pool of model inputs built from the task's *training* split; the TCAV
scores are computed on its *test* split (the probes). Where a concept is a region of an input,
it is given as cells (:attr:`~sumofparts.analysis.tcav.ConceptSet.cells`) and shown to the
backbone the way SOP shows a group: the rest zeroed (images) or masked (tokens), by the
adapter. The random examples of a concept are made the same way from random regions, so that
a CAV separates the concept from other regions, not "a region" from "a whole input".

* **cosmology** — windows of 6×6 cells (36 of the 196 cells, 18 % of the map, close to SOP's
  20 % groups) classified with the case study's own rules
  (:func:`sumofparts.report.case_study.classify_groups`): ``void`` (mean convergence below 0,
  no pixel above 3σ of its map), ``cluster`` (a pixel above 3σ, mean ≥ 0) and
  ``high-significance cluster`` (a pixel above 5σ); random: windows anywhere. Each concept
  names the case-study kind it matches, for the TCAV-vs-SOP comparison.
* **fashion** — textures and silhouette parts of the garments: ``horizontal stripes`` and
  ``vertical stripes`` (the garment's silhouette filled with a stripe pattern of period 4 px
  around its mean brightness), ``solid silhouette`` (filled with its mean brightness: shape
  without texture), ``outline`` (the garment's own pixels on the silhouette's 1-px border),
  against random training images; ``upper half`` and ``lower half`` (the garment restricted to
  the top or bottom 4 rows of the 8×8 patch grid) against random halves (top, bottom, left or
  right).
* **sentiment** — 4-token spans of training sentences: ``negation`` (starting at not, no,
  never, nothing, nobody, none, neither, nor, without, cannot, hardly, or an "n't"),
  ``positive words`` and ``negative words`` (starting at a word of a lexicon built from the
  training split itself: the 100 words most associated with "fresh" or "rotten" by the
  log-odds ratio with an informative Dirichlet prior, Monroe et al. 2008, among words seen at
  least 10 times, scikit-learn's English stop words left out), against random 4-token spans.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch

from ..analysis.tcav import ConceptSet, ConceptSets
from .base import TaskData
from ..errors import InputError

__all__ = ["cosmology_concepts", "fashion_concepts", "sentiment_concepts", "window_masks", "log_odds_lexicon",
           "NEGATIONS"]

NEGATIONS = ("not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "without", "cannot", "hardly")


def _probes_by_output(data: TaskData, n_probe: int) -> dict[int, Any]:
    """Regression: the first ``n_probe`` test inputs for every output; classification: the first
    ``n_probe`` test inputs of each class, for that class."""
    test = data.test
    n = len(test)
    if data.kind == "regression":
        idx = torch.arange(min(n, n_probe))
        x = _stack([test[int(i)][0] for i in idx])
        return dict.fromkeys(range(data.num_outputs), x)
    labels = torch.stack([test[i][1] for i in range(n)])
    out = {}
    for k in range(data.num_outputs):
        idx = (labels == k).nonzero(as_tuple=True)[0][:n_probe]
        if len(idx):
            out[k] = _stack([test[int(i)][0] for i in idx])
    return out


def _stack(items: Sequence[Any]) -> Any:
    if isinstance(items[0], dict):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}
    return torch.stack(list(items))


def window_masks(grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Every ``size`` window of cells on a ``grid``: ``(n_windows, h·w)`` bool, row-major positions."""
    h, w = grid
    a, b = size
    if not (1 <= a <= h and 1 <= b <= w):
        raise InputError(f"a {a}x{b} window does not fit the {h}x{w} cell grid")
    out = []
    for i in range(h - a + 1):
        for j in range(w - b + 1):
            m = torch.zeros(h, w, dtype=torch.bool)
            m[i:i + a, j:j + b] = True
            out.append(m.flatten())
    return torch.stack(out)


def _pick(candidates: np.ndarray, count: int, rng: np.random.Generator, per_item: int) -> np.ndarray:
    """Up to ``count`` rows of ``candidates (k, 2) = (item, window)``, at most ``per_item`` per item."""
    order = rng.permutation(len(candidates))
    used: Counter = Counter()
    chosen = []
    for r in order:
        item = int(candidates[r, 0])
        if used[item] < per_item:
            used[item] += 1
            chosen.append(r)
            if len(chosen) == count:
                break
    return candidates[np.asarray(chosen, dtype=int)] if chosen else candidates[:0]


def cosmology_concepts(data: TaskData, adapter, *, pool_size: int = 1000, random_size: int = 2000,
                       n_probe: int = 200, seed: int = 0, max_maps: int = 1500, window: tuple[int, int] = (6, 6),
                       cluster_sigma: float = 3.0, high_sigma: float = 5.0) -> ConceptSets:
    """Void, cluster and high-significance-cluster windows of the training maps (see the module docs)."""
    from ..report.case_study import classify_groups

    grid = adapter.cell_grid
    if grid is None:
        raise InputError("cosmology concepts need an image backbone with a cell grid")
    rng = np.random.default_rng(seed)
    maps = data.train.inputs if hasattr(data.train, "inputs") else torch.stack([it[0] for it in data.train])
    chosen_maps = np.sort(rng.permutation(len(maps))[:max_maps])
    maps = maps[torch.from_numpy(chosen_maps)]
    windows = window_masks(grid, window)  # (W, N)
    kinds, high = [], []
    with torch.no_grad():
        up = adapter.masks_to_input(windows.unsqueeze(0)).cpu()  # (1, W, H, W')
    for start in range(0, len(maps), 40):
        part = maps[start:start + 40]
        lab = classify_groups(part, up.expand(len(part), *up.shape[1:]), cluster_sigma=cluster_sigma,
                              high_sigma=high_sigma)
        kinds.append(lab["kind"])
        high.append(lab["high"])
    kind, high = np.concatenate(kinds), np.concatenate(high)  # (M, W)
    pairs = np.stack(np.meshgrid(np.arange(len(maps)), np.arange(len(windows)), indexing="ij"), -1).reshape(-1, 2)
    flat_kind, flat_high = kind.reshape(-1), high.reshape(-1)
    definitions = {
        "void": (flat_kind == 0, "void", "mean convergence < 0 and no pixel above "
                 f"{cluster_sigma:g} sigma of its map"),
        "cluster": (flat_kind == 1, "cluster", f"a pixel above {cluster_sigma:g} sigma of its map, mean >= 0"),
        "high-significance cluster": (flat_high, "high-significance cluster",
                                      f"a pixel above {high_sigma:g} sigma of its map"),
    }

    def make(name: str, rows: np.ndarray, description: str, family: str, sop_kind: str | None) -> ConceptSet:
        items = torch.from_numpy(rows[:, 0].copy())
        return ConceptSet(name=name, inputs=maps[items], cells=windows[torch.from_numpy(rows[:, 1].copy())],
                          description=description, random_family=family, sop_kind=sop_kind)

    concepts = []
    for i, (name, (sel, kind_name, rule)) in enumerate(definitions.items()):
        rows = _pick(pairs[sel], pool_size, np.random.default_rng([seed, i]), per_item=4)
        concepts.append(make(name, rows, f"{window[0]}x{window[1]}-cell windows of training maps: {rule} "
                             "(the case study's rule); the rest of the map set to 0", "random window", kind_name))
    random_rows = _pick(pairs, random_size, np.random.default_rng([seed, 99]), per_item=4)
    randoms = {"random window": make("random window", random_rows,
                                     f"{window[0]}x{window[1]}-cell windows anywhere in random training maps", "", None)}
    notes = [f"{len(maps)} training maps x {len(windows)} windows of {window[0]}x{window[1]} cells searched; "
             f"windows per kind: void {int(definitions['void'][0].sum())}, cluster "
             f"{int(definitions['cluster'][0].sum())}, high-significance cluster "
             f"{int(definitions['high-significance cluster'][0].sum())} of {len(pairs)}; at most 4 per map in a pool",
             "probes: the first test maps, for both outputs (Omega_m and sigma_8)"]
    return ConceptSets(concepts=concepts, randoms=randoms, probes=_probes_by_output(data, n_probe),
                       output_names=list(data.output_names), layers=["pool1", "pool2", "pool3", "act4", "act5", "act6"],
                       notes=notes)


def fashion_concepts(data: TaskData, adapter, *, pool_size: int = 1000, random_size: int = 2000, n_probe: int = 100,
                     seed: int = 0, period: float = 4.0) -> ConceptSets:
    """Stripes, solid silhouettes, outlines (whole images) and upper/lower halves (cells) of the
    training garments (see the module docs)."""
    from scipy.ndimage import binary_erosion

    from .fashion import foreground_masks

    grid = adapter.cell_grid
    if grid is None:
        raise InputError("fashion concepts need an image backbone with a cell grid")
    x = data.train.tensors[0] if hasattr(data.train, "tensors") else torch.stack([it[0] for it in data.train])
    n_total = len(x)

    def draw(count: int, salt: int) -> torch.Tensor:
        return torch.from_numpy(np.random.default_rng([seed, salt]).choice(n_total, size=count, replace=count > n_total))

    def textured(kind: str, salt: int) -> torch.Tensor:
        idx = draw(pool_size, salt)
        img = x[idx, 0].numpy()
        fg = foreground_masks(img)
        mean = np.array([im[m].mean() if m.any() else 0.0 for im, m in zip(img, fg)])[:, None, None]
        yy, xx = np.mgrid[: img.shape[1], : img.shape[2]]
        if kind == "horizontal stripes":
            out = mean * (1 + 0.8 * np.sin(2 * math.pi * yy / period))
        elif kind == "vertical stripes":
            out = mean * (1 + 0.8 * np.sin(2 * math.pi * xx / period))
        elif kind == "solid silhouette":
            out = np.broadcast_to(mean, img.shape)
        else:  # outline
            inner = np.stack([binary_erosion(m) for m in fg])
            out = np.where(fg & ~inner, img, 0.0)
            return torch.from_numpy(out.astype(np.float32)).unsqueeze(1)
        return torch.from_numpy(np.where(fg, out, 0.0).astype(np.float32)).unsqueeze(1)

    h, w = grid
    rows = torch.arange(h * w).reshape(h, w)
    halves = {"upper": rows < (h // 2) * w, "lower": rows >= (h // 2) * w,
              "left": (rows % w) < w // 2, "right": (rows % w) >= w // 2}
    halves = {k: v.flatten() for k, v in halves.items()}
    concepts = [ConceptSet(name, textured(name, i), description=desc, random_family="random image")
                for i, (name, desc) in enumerate([
                    ("horizontal stripes", f"the garment's silhouette filled with horizontal stripes (period {period:g} px)"),
                    ("vertical stripes", f"the garment's silhouette filled with vertical stripes (period {period:g} px)"),
                    ("solid silhouette", "the silhouette filled with the garment's mean brightness"),
                    ("outline", "the garment's pixels on the 1-px border of its silhouette, the rest 0")])]
    for i, part in enumerate(("upper", "lower")):
        idx = draw(pool_size, 10 + i)
        concepts.append(ConceptSet(f"{part} half", x[idx], cells=halves[part].expand(len(idx), -1).clone(),
                                   description=f"the garment restricted to the {part} {h // 2} rows of the {h}x{w} "
                                               "cell grid (the rest 0)", random_family="random half"))
    idx = draw(random_size, 20)
    which = np.random.default_rng([seed, 21]).integers(0, 4, size=random_size)
    half_masks = torch.stack([halves[k] for k in ("upper", "lower", "left", "right")])[torch.from_numpy(which)]
    randoms = {"random image": ConceptSet("random image", x[draw(random_size, 22)], description="random training images"),
               "random half": ConceptSet("random half", x[idx], cells=half_masks,
                                         description="random training images restricted to a random half")}
    layers = list(adapter.named_layers())[1:]  # every representation after the input embedding
    return ConceptSets(concepts=concepts, randoms=randoms, probes=_probes_by_output(data, n_probe),
                       output_names=list(data.output_names), layers=layers,
                       notes=[f"pools of {pool_size} from {n_total} training images; probes: the first {n_probe} "
                              "test images of each class, for that class"])


def log_odds_lexicon(token_lists: Sequence[Sequence[str]], labels: Sequence[int], *, size: int = 100,
                     min_count: int = 10, prior: float = 500.0, exclude: Sequence[str] = ()) -> dict[int, list[str]]:
    """Words most associated with each of two classes: ``{class: [word, ...]}`` (most associated first).

    For word w with counts y_w^(c) in class c (n^(c) words in all) and a Dirichlet prior
    α_w = prior · (y_w^(0) + y_w^(1)) / Σ_v (y_v^(0) + y_v^(1)), the log-odds difference
    ``δ_w = log((y1+α)/(n1+α0−y1−α)) − log((y0+α)/(n0+α0−y0−α))`` has variance about
    ``1/(y1+α) + 1/(y0+α)``; words are ranked by ``z = δ / sqrt(var)`` (class 1: highest, class 0:
    lowest), kept when ``z`` beyond ±1.96. Words: alphabetic, at least 3 letters, no word pieces.
    """
    counts = [Counter(), Counter()]
    for tokens, lab in zip(token_lists, labels):
        counts[int(lab)].update(t for t in tokens if t.isalpha() and len(t) >= 3 and t not in exclude)
    vocab = [w for w in set(counts[0]) | set(counts[1]) if counts[0][w] + counts[1][w] >= min_count]
    total = sum(counts[0].values()) + sum(counts[1].values())
    n0, n1 = sum(counts[0].values()), sum(counts[1].values())
    z = {}
    for word in vocab:
        y0, y1 = counts[0][word], counts[1][word]
        a = prior * (y0 + y1) / total
        delta = math.log((y1 + a) / (n1 + prior - y1 - a)) - math.log((y0 + a) / (n0 + prior - y0 - a))
        z[word] = delta / math.sqrt(1 / (y1 + a) + 1 / (y0 + a))
    ranked = sorted(z, key=lambda w: (-z[w], w))
    return {1: [w for w in ranked if z[w] > 1.96][:size], 0: [w for w in reversed(ranked) if z[w] < -1.96][:size]}


def sentiment_concepts(data: TaskData, adapter, *, pool_size: int = 1000, random_size: int = 2000, n_probe: int = 100,
                       seed: int = 0, span: int = 4, lexicon_size: int = 100) -> ConceptSets:
    """Negation and lexicon spans of the training sentences, against random spans (see the module docs)."""
    from .sentiment import load_tokenizer

    tokenizer = load_tokenizer()
    train = data.train
    ids, attn = train.input_ids, train.attention_mask
    valid = adapter.valid_cells({"input_ids": ids, "attention_mask": attn}).cpu()
    tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
    labels = train.labels.tolist()
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    lexicon = log_odds_lexicon([[t for t, v in zip(toks, val) if v] for toks, val in zip(tokens, valid.tolist())],
                               labels, size=lexicon_size, exclude=set(NEGATIONS) | set(ENGLISH_STOP_WORDS))
    L = ids.shape[1]

    def starts(match) -> np.ndarray:
        out = []
        for i, (toks, val) in enumerate(zip(tokens, valid.tolist())):
            for j in range(L):
                if val[j] and match(toks, j):
                    out.append((i, j))
        return np.asarray(out, dtype=int).reshape(-1, 2)

    def negation(toks: list[str], j: int) -> bool:
        if toks[j] in NEGATIONS:
            return True  # "n't" is "n ' t" after a word ending in n: the span starts at that word
        return j + 2 < L and toks[j].endswith("n") and toks[j + 1] == "'" and toks[j + 2] == "t"

    positive, negative = set(lexicon[1]), set(lexicon[0])
    candidates = {
        "negation": (starts(negation), f"a negation ({', '.join(NEGATIONS)}, or n't) and the {span - 1} tokens after it"),
        "positive words": (starts(lambda t, j: t[j] in positive),
                           f"a word of the training split's 'fresh' lexicon ({len(positive)} words, e.g. "
                           f"{', '.join(lexicon[1][:6])}) and the {span - 1} tokens after it"),
        "negative words": (starts(lambda t, j: t[j] in negative),
                           f"a word of the training split's 'rotten' lexicon ({len(negative)} words, e.g. "
                           f"{', '.join(lexicon[0][:6])}) and the {span - 1} tokens after it"),
    }

    def make(name: str, rows: np.ndarray, description: str, family: str) -> ConceptSet:
        cells = torch.zeros(len(rows), L, dtype=torch.bool)
        for r, (_, j) in enumerate(rows):
            cells[r, j:j + span] = True
        sent = torch.from_numpy(rows[:, 0].copy())
        cells &= valid[sent]
        return ConceptSet(name, {"input_ids": ids[sent], "attention_mask": attn[sent]}, cells=cells,
                          description=description + "; every other token masked", random_family=family)

    concepts = [make(name, _pick(rows, pool_size, np.random.default_rng([seed, i]), per_item=1), desc, "random span")
                for i, (name, (rows, desc)) in enumerate(candidates.items())]
    all_starts = np.argwhere(valid.numpy())
    randoms = {"random span": make("random span", _pick(all_starts, random_size, np.random.default_rng([seed, 99]),
                                                        per_item=1), f"{span} tokens from a random position of a "
                                                                     "random training sentence", "")}
    named = list(adapter.named_layers())
    blocks = named[1:-1] if len(named) > 2 else named
    layers = [*blocks[1::2], named[-1]]  # every second block and the pooler (the classifier's input)
    notes = [f"spans of {span} tokens; candidates: " + ", ".join(f"{k} {len(v[0])}" for k, v in candidates.items()),
             f"fresh lexicon: {', '.join(lexicon[1][:20])}", f"rotten lexicon: {', '.join(lexicon[0][:20])}",
             f"probes: the first {n_probe} test sentences of each class, for that class"]
    return ConceptSets(concepts=concepts, randoms=randoms, probes=_probes_by_output(data, n_probe),
                       output_names=list(data.output_names), layers=layers, notes=notes)
