"""``sop theory``: the exact insertion/deletion-error table of the binomial, printed and written.

The main CLI calls :func:`register` on its subparsers; ``python -m sumofparts.cli.theory`` runs the
same command stand-alone.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .arguments import NONNEGATIVE_INT, POSITIVE_INT

__all__ = ["register", "main_theory", "main"]


def _methods_arg(text: str) -> list[str]:
    from ..theory.methods import METHOD_NAMES

    if text.strip().lower() in ("all", ""):
        return list(METHOD_NAMES)
    if text.strip().lower() == "none":
        return []
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in METHOD_NAMES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown methods {bad}; expected a comma-separated list among {', '.join(METHOD_NAMES)} (or 'all', 'none')"
        )
    return names


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--d-max", type=POSITIVE_INT, default=12,
                   help="largest d (multiples of 3 from 3 up to it; max 20). Default 12")
    p.add_argument("--out", default="./sop-theory", help="output directory (default ./sop-theory)")
    p.add_argument(
        "--methods",
        type=_methods_arg,
        default=None,
        help="comma-separated post-hoc methods (default all): lime, kernel_shap, shapley_sampling, "
        "integrated_gradients, gradient_x_input, saliency, feature_ablation, deeplift, shapley_exact; or 'none'",
    )
    p.add_argument("--lp-d-max", type=POSITIVE_INT, default=15, help="solve the LPs only up to this d (default 15)")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="seed of the sampling methods (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sop-steps", type=NONNEGATIVE_INT, default=300,
                   help="training steps of the SOP model fitted to each binomial (0: no SOP column; default 300)")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``theory`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "theory",
        help="exact insertion/deletion errors on the binomial: LP optimum, dual bound, methods, groups",
        description="Total insertion and deletion errors over all 2^d subsets for the binomial "
        "p = prod(S1∪S2) + prod(S2∪S3): the LP optimum over feature attributions, its dual bound, "
        "the post-hoc methods' errors and the grouped attribution's error.",
    )
    _add_arguments(p)
    p.set_defaults(func=main_theory)
    return p


def main_theory(args: argparse.Namespace) -> int:
    """Run the table, print it, write CSV / Markdown / JSON / PNG / SVG into ``args.out``."""
    import torch

    from ..theory.methods import METHOD_NAMES
    from ..theory.report import default_meta, format_markdown, theory_rows, write_report
    from ..theory.sop_fit import sop_extra_attributions

    torch.set_num_threads(1)
    methods = list(METHOD_NAMES) if args.methods is None else list(args.methods)
    rows = theory_rows(
        args.d_max,
        methods=methods,
        lp_d_max=args.lp_d_max,
        seed=args.seed,
        progress=not getattr(args, "no_progress", False),
        extra_attributions=sop_extra_attributions(args.sop_steps, args.seed) if args.sop_steps else None,
    )
    cmd = f"sop theory --d-max {args.d_max}"
    if args.methods is not None:
        cmd += f" --methods {','.join(methods) or 'none'}"
    if args.lp_d_max != 15:
        cmd += f" --lp-d-max {args.lp_d_max}"
    if args.seed != 0:
        cmd += f" --seed {args.seed}"
    if args.sop_steps != 300:
        cmd += f" --sop-steps {args.sop_steps}"
    meta = default_meta(args.d_max, methods, args.seed, None, cmd)
    paths = write_report(rows, args.out, meta)
    print(format_markdown(rows, meta))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m sumofparts.cli.theory --d-max 12`` is ``sop theory --d-max 12``."""
    from .main import main as sop

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "theory":
        argv = ["theory", *argv]
    return sop(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
