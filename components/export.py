"""Quantize/export stage: ONNX FP32 with a parity check, INT8 with calibration, and the latency benchmark."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def export_model(
    model: Input[Model],
    calibration: Input[Dataset],
    test: Input[Dataset],
    int8: bool,
    bench_iters: int,
    options: dict,
    onnx: Output[Model],
    latency: Output[Artifact],
):
    """Write the export dir (``model.onnx``, ``model.int8.onnx``, ``export.json``) and ``latency.json``.

    Args:
        model: The selected model folder.
        calibration: Maps for INT8 calibration (the training split).
        test: Labeled maps for the parity check and the INT8 accuracy drop.
        int8: Also quantize to INT8.
        bench_iters: Timed single-map iterations per form in the latency benchmark.
        options: Extra ``export_onnx`` keyword arguments (e.g. ``max_abs_diff``, ``calibration_maps``).
    """
    import os

    from waferflow.config import atomic_write_json
    from waferflow.data.contract import load_dataset
    from waferflow.export.bench import bench_latency
    from waferflow.export.exporter import export_onnx
    from waferflow.orchestration.runtime import dataset_file, stage, versions

    name = model.metadata.get("candidate", "model")
    with stage("export", model=name, int8=int8, **dict(options)) as rec:
        calib = load_dataset(dataset_file(calibration.path), require_labels=True) if int8 else None
        test_ds = load_dataset(dataset_file(test.path), require_labels=True)
        report = export_onnx(model.path, onnx.path, calib_ds=calib, parity_ds=test_ds, int8=int8, **dict(options))
        lat = bench_latency(model.path, onnx.path, threads=2, iters=bench_iters, warmup=max(5, bench_iters // 10))
        os.makedirs(latency.path, exist_ok=True)
        atomic_write_json(os.path.join(latency.path, "latency.json"), lat)
        onnx.metadata.update({"candidate": name, "parity": report.get("parity"), "int8": report.get("int8"),
                              "data_hash": test.metadata.get("data_hash", ""), "versions": versions()})
        # the gate's p99 comes from latency.json: each form timed alone in its own process (bench_latency's default)
        latency.metadata.update({f"{k}_p99_ms": v["p99_ms"] for k, v in lat.get("forms", {}).items() if "p99_ms" in v})
        latency.metadata["isolation"] = lat["isolation"]
        rec.update(forms=sorted(lat.get("forms", {})))
