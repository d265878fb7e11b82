"""Run-to-run spread of the isolated latency figure: the tolerance of the isolation test in tests/export.

Builds the tests' tiny model (tests/export/conftest.py), then N times: ONNX FP32 timed alone, timed beside the other
forms (each still in its own process), and interleaved in one process. Prints JSON with the ratios.

    python benchmarks/bench_latency_isolation.py 6
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def main(n: int) -> None:
    os.environ["WAFERFLOW_PROGRESS"] = "0"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))
    import torch
    from conftest import make_ds, train_tiny

    from waferflow.export import bench_latency, export_onnx
    from waferflow.models import save_model_dir

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="wf-spread-"))
    train, test = make_ds(200, seed=1), make_ds(120, seed=2)
    model, spec = train_tiny(train)
    md = save_model_dir(model, spec, root / "model")
    export_onnx(md, root / "export", calib_ds=train, parity_ds=test, calibration_maps=64, fp32_layers="none")
    kw = dict(threads=1, warmup=20, iters=200, batch=8, batch_iters=3)
    alone, beside, inter = [], [], []
    for i in range(n):
        alone.append(bench_latency(md, root / "export", forms=["onnx_fp32"], **kw)["forms"]["onnx_fp32"]["p50_ms"])
        beside.append(bench_latency(md, root / "export", **kw)["forms"]["onnx_fp32"]["p50_ms"])
        inter.append(bench_latency(md, root / "export", isolate=False, **kw)["forms"]["onnx_fp32"]["p50_ms"])
        print(i, alone[-1], beside[-1], inter[-1], file=sys.stderr, flush=True)
    r = [b / a for a, b in zip(alone, beside)]
    ri = [b / a for a, b in zip(alone, inter)]
    print(json.dumps({"alone_p50_ms": alone, "beside_p50_ms": beside, "interleaved_p50_ms": inter,
                      "ratio_beside_over_alone": [round(x, 3) for x in r], "max_ratio": max(max(r), 1 / min(r)),
                      "ratio_interleaved_over_alone": [round(x, 3) for x in ri], "load": os.getloadavg()}))
    shutil.rmtree(root)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
