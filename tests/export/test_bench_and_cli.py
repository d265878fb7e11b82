"""Latency benchmark JSON, the export CLI, INT8 fallback, pruning, and the standalone onnxruntime example."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from waferflow.predictors import onnx_predictor, predict_dataset
from waferflow.models import read_spec

REPO = Path(__file__).resolve().parents[2]


def test_bench_latency_json(tiny):
    from waferflow.export import bench_latency

    res = bench_latency(tiny["model_dir"], tiny["export_dir"], threads=1, warmup=2, iters=10, batch=8)
    forms = res["forms"]
    for name in ("torch_eager", "onnx_fp32", "onnx_int8"):
        f = forms[name]
        assert 0 < f["p50_ms"] <= f["p95_ms"] <= f["p99_ms"]
        assert f["throughput_maps_per_s"] > 0 and f["batch_size"] == 8 and f["size_bytes"] > 0
    assert forms["onnx_int8"]["size_bytes"] == (tiny["export_dir"] / "model.int8.onnx").stat().st_size
    import torch

    if not torch.cuda.is_available():
        assert forms["tensorrt_fp16"]["skipped"] == "skipped: no CUDA device"
        assert forms["tensorrt_int8"]["skipped"] == "skipped: no CUDA device"
    assert res["threads"] == 1 and res["input_size"] == 32 and res["baseline"] == "torch_eager"
    assert res["size_ratio_int8_vs_fp32"] == pytest.approx(
        forms["onnx_int8"]["size_bytes"] / forms["onnx_fp32"]["size_bytes"])
    json.dumps(res)


def test_each_form_is_timed_alone_in_its_own_process(tiny):
    """By default no form shares a process (so no thread pool) with another, and ONNX forms never load torch."""
    import os

    from waferflow.export import bench_latency

    res = bench_latency(tiny["model_dir"], tiny["export_dir"], threads=1, warmup=1, iters=5, batch=4, rounds=2)
    assert res["isolation"] == "process" and res["rounds"] == 2
    forms = {k: v for k, v in res["forms"].items() if "pids" in v}
    assert set(forms) == {"torch_eager", "onnx_fp32", "onnx_int8"}
    pids = [p for v in forms.values() for p in v["pids"]]
    assert len(pids) == 6 and len(set(pids)) == 6 and os.getpid() not in pids  # a fresh process per form and round
    assert forms["torch_eager"]["torch_imported"]
    assert not forms["onnx_fp32"]["torch_imported"] and not forms["onnx_int8"]["torch_imported"]


# Measured on the shared 2-core machine (load average 11-12; this tiny model, 1 thread, 200 iterations, 6 repeats;
# benchmarks/bench_latency_isolation.py 6): ONNX FP32 p50 beside the other forms / alone was 0.76-1.49, while timing
# all forms in one process (isolate=False) made it 2.26-4.30x the isolated figure. A 2x band passes the noise and
# fails the interference.
ISOLATION_TOLERANCE = 2.0


def test_a_forms_figure_does_not_change_when_others_are_measured_beside_it(tiny):
    from waferflow.export import bench_latency

    kw = dict(threads=1, warmup=20, iters=200, batch=8, batch_iters=3)
    alone = bench_latency(tiny["model_dir"], tiny["export_dir"], forms=["onnx_fp32"], **kw)["forms"]
    assert set(k for k, v in alone.items() if "p50_ms" in v) == {"onnx_fp32"}
    beside = bench_latency(tiny["model_dir"], tiny["export_dir"], **kw)["forms"]
    ratio = beside["onnx_fp32"]["p50_ms"] / alone["onnx_fp32"]["p50_ms"]
    assert 1 / ISOLATION_TOLERANCE <= ratio <= ISOLATION_TOLERANCE, (alone["onnx_fp32"], beside["onnx_fp32"])


def test_interleaved_is_an_option_and_says_so(tiny):
    from waferflow.export import bench_latency

    res = bench_latency(tiny["model_dir"], tiny["export_dir"], threads=1, warmup=1, iters=3, batch=4,
                        isolate=False)
    assert res["isolation"] == "interleaved"
    assert "pids" not in res["forms"]["onnx_fp32"] and res["forms"]["onnx_int8"]["p99_ms"] > 0


def test_bench_unknown_form_is_a_clear_error(tiny):
    from waferflow.errors import ConfigError
    from waferflow.export import bench_latency

    with pytest.raises(ConfigError, match=r"\['onnx_int9'\] are not present"):
        bench_latency(tiny["model_dir"], tiny["export_dir"], forms=["onnx_int9"], iters=1)


def test_bench_corrupt_form_fails_with_the_workers_reason(tiny, tmp_path):
    import shutil

    from waferflow.export import bench_latency

    ed = tmp_path / "export"
    shutil.copytree(tiny["export_dir"], ed)
    (ed / "model.int8.onnx").write_bytes(b"\x08\x07 truncated")
    from waferflow.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="timing onnx_int8 alone: .*corrupt or truncated.*re-run"):
        bench_latency(tiny["model_dir"], ed, forms=["onnx_int8"], iters=1, warmup=0)


def test_cli_bench_writes_latency_json(tiny, tmp_path, capsys):
    from waferflow.cli import main

    out = tmp_path / "lat.json"
    rc = main(["bench", "latency", "--model", str(tiny["model_dir"]), "--export", str(tiny["export_dir"]),
               "--threads", "1", "--warmup", "1", "--iters", "3", "--batch", "4", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["forms"].keys() == json.loads(out.read_text())["forms"].keys()


def test_cli_export_with_pruning(tiny, tmp_path):
    from waferflow.cli import main
    from waferflow.data.contract import save_dataset

    save_dataset(tiny["test"].subset(np.arange(40)), tmp_path / "test.npz")
    rc = main(["export", "--model", str(tiny["model_dir"]), "--data", str(tmp_path / "test.npz"),
               "--out", str(tmp_path / "exp"), "--no-int8", "--prune", "0.3"])
    assert rc == 0
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert info["int8"] is None and not (tmp_path / "exp" / "model.int8.onnx").exists()
    assert info["prune"]["sparsity"] == pytest.approx(0.3, abs=0.02)
    assert info["prune"]["accuracy_drop"] is not None
    assert info["parity"]["argmax_agreement"] >= 0.999  # parity is against the pruned model that was exported


def test_cli_export_bad_data_exits_2(tiny, tmp_path, capsys):
    from waferflow.cli import main

    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    rc = main(["export", "--model", str(tiny["model_dir"]), "--data", str(tmp_path / "bad.npz"),
               "--out", str(tmp_path / "exp")])
    assert rc == 2 and "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_dynamic_fallback_is_recorded(tiny, tmp_path, monkeypatch):
    import onnxruntime.quantization as q

    from waferflow.export.quantize import quantize_int8

    def boom(*a, **k):
        raise RuntimeError("simulated calibration failure")

    monkeypatch.setattr(q, "quantize_static", boom)
    x = [np.zeros((4, 3, 32, 32), np.float32)]
    res = quantize_int8(tiny["export_dir"] / "model.onnx", tmp_path / "m.int8.onnx", x)
    assert res["method"] == "dynamic_per_channel"
    assert "simulated calibration failure" in res["fallback_reason"]
    assert onnx_predictor(tmp_path / "m.int8.onnx")(x[0]).shape == (4, 3)


def test_standalone_example_without_waferflow(tiny, tmp_path):
    """The DEPLOYMENT.md example runs with numpy + onnxruntime only and predicts what the evaluator predicts."""
    from waferflow.data.contract import WaferDataset, save_dataset

    # variable-size maps exercise the example's own resize
    base = tiny["test"].subset(np.arange(24))
    maps = [np.kron(m, np.ones((2, 2), np.uint8))[: 40 + i % 5, : 38 + i % 3] for i, m in enumerate(base.maps)]
    shapes = np.array([m.shape for m in maps], np.int32)
    offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
    ds = WaferDataset(class_names=base.class_names, labels=base.labels, maps_flat=np.concatenate(
        [m.ravel() for m in maps]), shapes=shapes, offsets=offsets)
    save_dataset(ds, tmp_path / "maps.npz")
    model = tiny["export_dir"] / "model.int8.onnx"
    want = predict_dataset(onnx_predictor(model), ds, read_spec(tiny["model_dir"])).argmax(1).tolist()

    site = sysconfig.get_paths()["purelib"]
    # -I: no PYTHONPATH, no cwd; -S: no site, so the editable-install hook for waferflow is not loaded
    boot = ("import sys, importlib.util, runpy; sys.path.append(%r); "
            "assert importlib.util.find_spec('waferflow') is None, 'waferflow must not be importable'; "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')") % site
    out = tmp_path / "pred.json"
    r = subprocess.run([sys.executable, "-I", "-S", "-c", boot, str(REPO / "scripts" / "onnx_standalone_example.py"),
                        str(model), str(tmp_path / "maps.npz"), "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["pred"] == want


def test_deployment_doc_embeds_the_tested_example():
    doc = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    block = doc.split("```python\n", 1)[1].split("\n```", 1)[0]
    assert block.strip() == (REPO / "scripts" / "onnx_standalone_example.py").read_text().strip()


@pytest.mark.parametrize("calibration", ["percentile", "entropy"])
def test_calibration_methods_quantize_and_are_recorded(tiny, tmp_path, calibration):
    from waferflow.export.quantize import calibration_batches, quantize_int8

    spec = read_spec(tiny["model_dir"])
    calib = list(calibration_batches(tiny["train"], spec, 64))
    res = quantize_int8(tiny["export_dir"] / "model.onnx", tmp_path / "m.int8.onnx", calib, calibration=calibration)
    assert res["method"] == "static_qdq_per_channel" and res["calibration"] == calibration
    fp32 = onnx_predictor(tiny["export_dir"] / "model.onnx")(calib[0])
    int8 = onnx_predictor(tmp_path / "m.int8.onnx")(calib[0])
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9


def test_unknown_calibration_method_is_a_config_error(tiny, tmp_path):
    from waferflow.errors import ConfigError
    from waferflow.export.quantize import quantize_int8

    with pytest.raises(ConfigError, match="calibration must be one of"):
        quantize_int8(tiny["export_dir"] / "model.onnx", tmp_path / "m.int8.onnx",
                      [np.zeros((1, 3, 32, 32), np.float32)], calibration="median")
    assert not (tmp_path / "m.int8.onnx").exists()
