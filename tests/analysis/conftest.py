"""One BLAS thread for the analysis tests: on a shared 2-core machine OpenBLAS's own threads make
the small linear algebra of CAV fitting and CCA 30x slower."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
