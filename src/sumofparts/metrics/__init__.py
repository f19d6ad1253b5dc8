"""Metrics of SPEC §5, each usable on any method (definitions in docs/evaluation.md).

* ranking: :func:`cell_ranks`, :func:`top_cells`, :func:`tie_keys` (ties broken in seeded random
  orders), :func:`constant_maps`, :func:`nonfinite_maps`;
* accuracy: :func:`error`, :func:`mse`, :func:`per_target_mse`, :func:`r2_score`, :func:`sparsity_curve`;
* purity: :func:`purity` (coverage |m∩f|/|f|, the authors' "IoU"), :func:`iou`,
  :func:`grouped_purity` (highest-weighted groups first — the authors sort ascending);
* faithfulness: :func:`path_curves` (insertion and deletion paths of any model),
  :func:`path_scores` / :func:`path_score_rows` (the table's numbers), :func:`sop_curves` (SOP's
  groups re-made at each k), :func:`fidelity`, :func:`insertion_error`, :func:`deletion_error`;
* robustness: :func:`infidelity`, :func:`max_sensitivity`;
* :func:`bootstrap_std`.
"""
from .accuracy import (error, mse, per_example_error, per_example_squared_error, per_target_mse, r2_score,
                       sparsity_curve)
from .bootstrap import bootstrap_std
from .faithfulness import (PathCurves, SOPCurves, deletion_curve, deletion_error, fidelity, fractions,
                           insertion_curve, insertion_error, masked_outputs, orient_scores, path_curves, path_masks,
                           path_score_rows, path_scores, sop_curves, sop_path_curves, step_counts, target_values)
from .purity import grouped_purity, grouped_union, iou, purity, top_fraction_cells
from .ranking import cell_ranks, constant_maps, nonfinite_maps, tie_keys, top_cells
from .robustness import infidelity, max_sensitivity, subset_removals, uniform_perturbations

__all__ = [
    "error", "mse", "per_example_error", "per_example_squared_error", "per_target_mse", "r2_score", "sparsity_curve",
    "purity", "iou", "grouped_union", "grouped_purity", "top_fraction_cells",
    "cell_ranks", "top_cells", "tie_keys", "constant_maps", "nonfinite_maps",
    "fractions", "step_counts", "path_masks", "orient_scores", "masked_outputs", "target_values", "PathCurves",
    "path_curves", "insertion_curve", "deletion_curve", "path_score_rows", "path_scores", "SOPCurves", "sop_curves",
    "sop_path_curves", "fidelity", "insertion_error", "deletion_error",
    "infidelity", "max_sensitivity", "subset_removals", "uniform_perturbations", "bootstrap_std",
]
