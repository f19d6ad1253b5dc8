"""``sop train``: train SOP on a task (frozen backbone), resumable, optionally under torchrun (DDP)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .arguments import add_run_options, check_device, check_out, resolve_configs, set_threads
from .paths import sop_dir

__all__ = ["register", "init_distributed"]


def _cmd_train(args: argparse.Namespace) -> int:
    from ..pipeline import build_sop
    from ..training import train

    set_threads(args.threads)
    device = "cpu"
    if args.distributed:
        device = init_distributed()
    elif args.device:
        device = check_device(args.device)
    sop_over, cfg = resolve_configs(args.task, args.sop_set, args.train_set, steps=args.steps, seed=args.seed)
    out = args.out or sop_dir(args.task)
    check_out(out)
    sop, data = build_sop(args.task, cache_dir=args.cache_dir, size=args.size, seed=args.seed,
                          data_seed=args.data_seed, backbone=args.backbone, sop_overrides=sop_over, progress=not args.no_progress)
    res = train(sop, data.train, data.val, cfg, out, resume=args.resume, progress=not args.no_progress,
                device=device, allow_config_change=args.allow_config_change)
    if args.distributed:
        import torch.distributed as dist

        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank:
            return 0
    print(f"best validation {res.metric} {res.best_score:.4f} at step {res.best_step}; checkpoint: {res.best_dir}")
    return 0




def init_distributed() -> str:
    """Join the process group that ``torchrun`` describes in the environment; returns the device."""
    import os

    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("--distributed expects to be started by torchrun (RANK and WORLD_SIZE are not set): "
                         "torchrun --nproc_per_node N -m sumofparts.cli train --distributed ...")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return f"cuda:{local}"
    dist.init_process_group("gloo")
    return "cpu"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sop train`` to the ``sop`` command."""
    p = sub.add_parser("train", help="train an SOP model on a task (frozen backbone)")
    p.add_argument("--task", default="cosmology", help="task name (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: sop-runs/TASK/sop)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training under torchrun (DDP; gloo on CPU, nccl on GPU)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cpu)")
    add_run_options(p)
    p.set_defaults(func=_cmd_train)
