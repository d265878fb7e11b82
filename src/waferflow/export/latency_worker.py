"""One model form timed alone in its own process (``python -m waferflow.export.latency_worker JOB.json``).

``waferflow.export.bench`` starts this module once per form, one process at a time, so no other form's thread
pool (PyTorch's OpenMP pool, another onnxruntime session's) is alive while a form is timed. An ONNX form's process
never imports torch. The job file names the form (a row of ``waferflow.predictors.FORMS``), its file, the thread count and the ``.npy`` inputs; the result is
one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np


def make_predictor(form: str, path: str, threads: int) -> Callable[[np.ndarray], Any]:
    """The predictor of one form of ``waferflow.predictors.FORMS`` (``torch``: a model dir; ``onnx_*``,
    ``tensorrt_*``: the form's file or its dir), with ``threads`` torch / onnxruntime threads.

    Raises:
        ModelFormatError: an unknown form or a missing file.
    """
    from waferflow.predictors import create_predictor

    return create_predictor(form, path, threads=threads)


def time_form(predict: Callable[[np.ndarray], Any], x1: np.ndarray, xb: np.ndarray, warmup: int, iters: int,
              batch_iters: int) -> dict:
    """Single-map call times (ms, after ``warmup`` calls) and batch seconds of one predictor.

    Returns:
        ``{"single_ms": [iters floats], "single_cpu_ms": [...], "batch_seconds": [batch_iters floats]}`` (one
        warm-up batch call first). ``single_cpu_ms`` is this process's CPU time per call: unlike the wall time it
        does not grow while other programs hold the cores (with several threads it includes their spinning).
    """
    for _ in range(warmup):
        predict(x1)
    single, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        predict(x1)
        single.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    predict(xb)
    batch = []
    for _ in range(batch_iters):
        t = time.perf_counter()
        predict(xb)
        batch.append(time.perf_counter() - t)
    return {"single_ms": single, "single_cpu_ms": cpu, "batch_seconds": batch}


def main(argv: list[str] | None = None) -> int:
    """Run the job file given as the only argument; print the timings as one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m waferflow.export.latency_worker JOB.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        job = json.load(f)
    x1 = np.load(job["x1"], allow_pickle=False)
    xb = np.load(job["xb"], allow_pickle=False)
    from waferflow.errors import WaferflowError

    try:
        predict = make_predictor(job["form"], job["path"], int(job["threads"]))
    except WaferflowError as e:  # the parent re-raises it with the same class and message
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
        return 3
    res = time_form(predict, x1, xb, int(job["warmup"]), int(job["iters"]), int(job["batch_iters"]))
    res.update(pid=os.getpid(), torch_imported="torch" in sys.modules)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
