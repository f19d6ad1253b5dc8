"""Looking inside the backbone, beside SOP's groups: concepts (TCAV) and model comparison.

* :mod:`.layers`: activations and gradients of the layers an adapter names, by hooks.
* :mod:`.tcav`: concept activation vectors, TCAV scores, the t-test against many random
  concepts and the Holm correction (``sop concepts``).
* :mod:`.similarity`: CKA (linear, RBF), CCA, SVCCA, PWCCA, PCA.
* :mod:`.compare`: layer-by-layer similarity of two models (a backbone before and after a
  fine-tune, two seeds, the backbone and SOP's generator copy; ``sop compare``).
"""
from __future__ import annotations

from .layers import LayerError, layer_activations, layer_gradients, select_layers
from .similarity import cca, linear_cka, pca, pwcca, rbf_cka, svcca
from .tcav import TCAV, ConceptError, ConceptSet, ConceptSets, TCAVResult, TCAVTest, fit_cav, holm

__all__ = ["LayerError", "layer_activations", "layer_gradients", "select_layers", "cca", "linear_cka", "pca",
           "pwcca", "rbf_cka", "svcca", "TCAV", "ConceptError", "ConceptSet", "ConceptSets", "TCAVResult",
           "TCAVTest", "fit_cav", "holm"]
