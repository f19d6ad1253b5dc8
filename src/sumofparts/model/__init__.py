"""The Sum-of-Parts model: generator, selector, the module, its config and output types."""
from .config import SOPConfig
from .generator import GroupGenerator, binarise_top_tau, sample_candidates
from .output import GroupedExplanation, GroupInfo, SOPOutput
from .selector import GroupSelector
from .sop import SumOfParts

__all__ = ["SOPConfig", "GroupGenerator", "GroupSelector", "SumOfParts", "SOPOutput", "GroupedExplanation",
           "GroupInfo", "binarise_top_tau", "sample_candidates"]
