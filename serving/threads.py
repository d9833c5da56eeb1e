"""One compute thread per server process: torch's, faiss's and the BLAS library's pools.

A request's work is small (a user-tower forward pass, one matrix-vector product over the
item vectors); spreading it over threads costs synchronisation, and on a busy machine a
multi-threaded BLAS call waits for a second core: measured on this 2-core machine under
load average ~5, the 100K x 65 float32 product + top-20 took p50 8.0 ms with OpenBLAS's
default threads and 3.8 ms with one. More throughput comes from more processes.

``OPENBLAS_NUM_THREADS`` only works before numpy is imported, so (as threadpoolctl does) the
OpenBLAS libraries already loaded in the process are found in ``/proc/self/maps`` and told
through their own ``*_set_num_threads`` entry point (numpy's wheels bundle a prefixed build,
``scipy_openblas_set_num_threads64_``).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import faiss

log = logging.getLogger(__name__)

_SETTERS = (
    "openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads_64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
)


def _loaded_openblas() -> list[str]:
    maps = Path("/proc/self/maps")
    if not maps.exists():  # not Linux: rely on OPENBLAS_NUM_THREADS set before start
        return []
    paths = {line.split()[-1] for line in maps.read_text().splitlines() if "openblas" in line}
    return sorted(p for p in paths if p.startswith("/") and os.path.exists(p))


def limit_threads(n: int) -> int:
    """Set torch's intra-op threads, faiss's OpenMP threads and every loaded OpenBLAS to
    ``n``; returns how many BLAS libraries were set. Imports torch (at the server's start,
    not at import): a two-tower version is loaded with it right after."""
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    count = 0
    for path in _loaded_openblas():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                count += 1
                break
    log.debug("compute threads set to %d (torch and %d BLAS libraries)", n, count)
    return count
