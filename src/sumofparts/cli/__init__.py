"""The ``sop`` command: one module per command, :func:`main` in :mod:`.main`, the ``sop-runs`` path
convention in :mod:`.paths`."""
from .main import build_parser, init_distributed, main, resolve_configs

__all__ = ["main", "build_parser", "resolve_configs", "init_distributed"]
