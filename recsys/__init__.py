"""Core of the recommender pipeline: datasets, features, point-in-time training sets.

Plain functions that the Dagster assets (`orchestration/`), the model (`towers/`) and the
server (`serving/`) glue together; each is callable and testable without Dagster.
"""

import os

# OpenMP threads that wait for work sleep instead of spinning. torch's bundled libgomp reads
# this once, when torch is first imported, so it is set here, before any module of the
# project imports torch (an explicit setting in the environment wins). Spinning threads
# collapse when a core is shared: 1M-interaction training steps on 2 cores with other jobs
# running took 270-670 ms with two spinning threads against 45-95 ms passive and 45-65 ms
# with one thread (benchmarks/bench_training.py, README).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The OpenBLAS that numpy and scipy bundle (EASE's dense Cholesky inverse, its Gram matrix)
# has no passive wait: with two threads on two cores, one core busy with another process, one
# λ of a 3,000-item EASE took 9.6 s against 0.8 s on one thread (benchmarks/bench_ease.py).
# One thread, read when the library loads, unless the environment says otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
