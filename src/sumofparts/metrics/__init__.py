"""Metrics of SPEC §5, each usable on any method (see docs/evaluation.md).

* accuracy: :func:`error`, :func:`mse`, :func:`sparsity_curve`;
* purity: :func:`purity` (coverage |m∩f|/|f|, the authors' "IoU"), :func:`iou`,
  :func:`grouped_purity` (highest-weighted groups first — the authors sort ascending);
* faithfulness: :func:`insertion_curve`, :func:`deletion_curve`, :func:`sop_curves`,
  :func:`raw_auc`, :func:`normalised_auc`, :func:`fidelity`, :func:`insertion_error`,
  :func:`deletion_error`;
* robustness (Captum): :func:`infidelity`, :func:`max_sensitivity`;
* :func:`bootstrap_std`.
"""
from .accuracy import error, mse, per_example_error, per_example_squared_error, sparsity_curve
from .bootstrap import bootstrap_std
from .faithfulness import (SOPCurves, curve_from_logits, deletion_curve, deletion_error, fidelity, fractions,
                           insertion_curve, insertion_error, masked_predictions, normalised_auc, raw_auc, sop_curves)
from .purity import grouped_purity, grouped_union, iou, purity, top_fraction_cells
from .robustness import infidelity, max_sensitivity

__all__ = [
    "error", "mse", "per_example_error", "per_example_squared_error", "sparsity_curve",
    "purity", "iou", "grouped_union", "grouped_purity", "top_fraction_cells",
    "fractions", "masked_predictions", "curve_from_logits", "insertion_curve", "deletion_curve", "raw_auc",
    "normalised_auc", "SOPCurves", "sop_curves", "fidelity", "insertion_error", "deletion_error",
    "infidelity", "max_sensitivity", "bootstrap_std",
]
