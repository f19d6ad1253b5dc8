"""The theory of the SOP paper, computed exactly.

* :mod:`.polynomials` — monomials, sums of monomials and the binomial of the insertion-error
  theorem as torch modules, with exact subset tables and closed-form Shapley values.
* :mod:`.errors` — exact total insertion / deletion errors over all ``2**d`` subsets, for feature
  and grouped attributions (vectorised with bit masks).
* :mod:`.lp` — the optimal feature attribution by linear programming (HiGHS), the dual LP, and
  hand-made dual-feasible certificates whose value lower-bounds every feature attribution.
* :mod:`.methods` — post-hoc attributions (Captum) of the polynomials.
* :mod:`.report` / :mod:`.cli` — the ``sop theory`` table, its files and its plot.
"""
from .errors import (
    attribution_sums,
    deletion_errors,
    deletion_targets,
    group_sums,
    grouped_deletion_errors,
    grouped_insertion_errors,
    insertion_errors,
    insertion_targets,
    subset_values,
    total_deletion_error,
    total_grouped_deletion_error,
    total_grouped_insertion_error,
    total_insertion_error,
)
from .lp import (
    MAX_LP_D,
    LPResult,
    best_parity_bound,
    binomial_dual_bound_value,
    binomial_dual_certificate,
    dual_infeasibility,
    dual_objective,
    layer_certificate,
    parity_certificate,
    solve_dual,
    solve_primal,
    subset_matrix,
    walsh_hadamard,
)
from .methods import DEFAULT_BUDGET, METHOD_NAMES, run_method, run_methods
from .polynomials import (
    MAX_EXACT_D,
    Binomial,
    Monomial,
    SumOfMonomials,
    binomial,
    exact_shapley,
    popcounts,
    subset_masks,
)

__all__ = [
    # polynomials
    "MAX_EXACT_D", "Monomial", "SumOfMonomials", "Binomial", "binomial", "exact_shapley",
    "popcounts", "subset_masks",
    # errors
    "subset_values", "attribution_sums", "group_sums", "insertion_targets", "deletion_targets",
    "insertion_errors", "deletion_errors", "grouped_insertion_errors", "grouped_deletion_errors",
    "total_insertion_error", "total_deletion_error", "total_grouped_insertion_error",
    "total_grouped_deletion_error",
    # lp
    "MAX_LP_D", "LPResult", "subset_matrix", "solve_primal", "solve_dual", "dual_objective",
    "dual_infeasibility", "walsh_hadamard", "parity_certificate", "layer_certificate",
    "best_parity_bound", "binomial_dual_certificate", "binomial_dual_bound_value",
    # methods
    "DEFAULT_BUDGET", "METHOD_NAMES", "run_method", "run_methods",
]
