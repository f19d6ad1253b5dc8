"""sumofparts: Sum-of-Parts models, faithful by construction.

>>> from sumofparts import SumOfParts
>>> sop = SumOfParts.from_backbone(model, adapter=ViTAdapter(model), num_groups=20, tau=0.2)
>>> out = sop(x)                          # prediction = weighted sum of group predictions
>>> expl = sop.explain(x, target=3)       # groups, weights and a per-pixel attribution map
"""
from .adapters import BackboneAdapter, BertAdapter, CNNAdapter, ViTAdapter
from .model import GroupedExplanation, GroupInfo, SOPConfig, SOPOutput, SumOfParts
from .training import TrainConfig, TrainResult, train

__version__ = "0.1.0"

__all__ = ["SumOfParts", "SOPConfig", "SOPOutput", "GroupedExplanation", "GroupInfo", "BackboneAdapter",
           "ViTAdapter", "CNNAdapter", "BertAdapter", "train", "TrainConfig", "TrainResult", "__version__"]

