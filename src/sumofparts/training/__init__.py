"""Training: SOP itself (:mod:`.sop`) and the group-robust fine-tune of a backbone (:mod:`.robust`)."""
from .sop import (RESUME_INERT_FIELDS, TRAIN_CONFIG_FIELDS, TrainConfig, TrainResult, check_targets, evaluate_model,
                  iterate_batches, lr_factor, train)

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate_model", "iterate_batches", "lr_factor",
           "TRAIN_CONFIG_FIELDS", "RESUME_INERT_FIELDS", "check_targets"]
