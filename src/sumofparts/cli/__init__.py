"""The ``sop`` command: one module per command, :func:`main` in :mod:`.main`."""
from .main import _init_distributed, build_parser, main, resolve_configs

__all__ = ["main", "build_parser", "resolve_configs"]
