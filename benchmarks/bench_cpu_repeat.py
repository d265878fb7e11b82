"""Benchmark: does a seeded training repeat, on this CPU and on another SIMD path of it?

Trains the same seeded ``tf_efficientnet_lite0`` (ImageNet weights, ``full_finetune``) on the same synthetic maps
three times, each in a fresh process: twice as the CPU is, and once with oneDNN held to AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``, what PyTorch's CPU convolutions would run on a CPU without AVX-512 or AMX). Prints the
weights' sha256, the largest difference of any float entry of the state dict (batch-norm statistics included) from
the first run, and the validation scores of each::

    python -m benchmarks.bench_cpu_repeat --out cpu_repeat.json     # about 2 minutes on two cores

The first two runs are expected to match bit for bit (the run is seeded); the third shows what another CPU does to
the same recipe (``waferflow.host``). On a CPU that has nothing above AVX2 the third run is the same path, and the
JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _worker(out: Path, n: int, steps: int) -> None:
    import hashlib

    import torch

    from waferflow.config import load_config
    from waferflow.data.synth import generate
    from waferflow.host import describe_host
    from waferflow.train import TrainConfig, train

    tr, va = generate(n, size=64, seed=0, taxonomy="wm811k"), generate(n // 4, size=64, seed=1, taxonomy="wm811k")
    cfg = load_config(TrainConfig, overrides=["backbone=tf_efficientnet_lite0", "strategy=full_finetune",
                                              "input_size=80", f"steps={steps}", "patience_steps=0", "seed=0",
                                              "pretrained=auto", "num_threads=2"])
    r = train(cfg, tr, va, out / "model")
    state = torch.load(out / "model" / "weights.pt", map_location="cpu", weights_only=True)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(state.items()))).hexdigest()
    torch.save(state, out / "state.pt")
    (out / "result.json").write_text(json.dumps({
        "weights_sha256": digest, "val": {k: r.best_val.get(k) for k in ("accuracy", "macro_f1")},
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(unset: the CPU's best)"),
        "host": describe_host()}))


def _max_diff(a: Path, b: Path) -> float:
    import torch

    sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=800, help="synthetic training maps (a quarter as many validate)")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        return _worker(a.worker, a.n, a.steps)
    from benchmarks._report import emit
    from waferflow.host import cpu_flags

    runs = {"as_is_1": {}, "as_is_2": {}, "onednn_avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
    result: dict = {"command": " ".join(sys.argv), "n": a.n, "steps": a.steps, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="wf-cpu-repeat-") as td:
        for name, env in runs.items():
            out = Path(td) / name
            out.mkdir()
            subprocess.run([sys.executable, "-m", "benchmarks.bench_cpu_repeat", "--worker", str(out), "--n",
                            str(a.n), "--steps", str(a.steps)], check=True, env={**os.environ, **env,
                                                                                 "WAFERFLOW_PROGRESS": "0"},
                           cwd=Path(__file__).resolve().parents[1])
            rec = json.loads((out / "result.json").read_text())
            rec["max_abs_weight_diff_vs_as_is_1"] = _max_diff(Path(td) / "as_is_1" / "state.pt", out / "state.pt")
            result["runs"][name] = rec
    r = result["runs"]
    above_avx2 = any(f.startswith(("avx512", "amx")) for f in cpu_flags() or [])
    result["repeats_on_this_cpu"] = r["as_is_1"]["weights_sha256"] == r["as_is_2"]["weights_sha256"]
    result["same_on_the_avx2_path"] = (r["as_is_1"]["weights_sha256"] == r["onednn_avx2"]["weights_sha256"]
                                       if above_avx2 else "not measured: this CPU has nothing above AVX2")
    emit(result, a.out)


if __name__ == "__main__":
    main()
