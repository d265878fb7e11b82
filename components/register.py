"""MLflow stages: open the pipeline run, log the selected candidate, gate + register, promote, and the
exit handler that closes the run (FINISHED, or FAILED with the error)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output, PipelineTaskFinalStatus

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def start_run(
    experiment: str,
    pipeline_run: str,
    data: Input[Dataset],
    candidates: list,
    train_config: dict,
    epochs: dict,
    gates: dict,
    data_source: str,
    n_maps: int,
    map_size: int,
    taxonomy: str,
    seed: int,
    input_size: int,
    pretrained: str,
    device: str,
    tracking_uri: str,
) -> str:
    """Create the MLflow parent run of this pipeline run; returns its id.

    Args:
        experiment: MLflow experiment.
        pipeline_run: The KFP run name (tag and run name).
        data: The data stage's dataset (its manifest is logged; its hash becomes the ``data_hash`` tag).
        candidates, train_config, epochs, gates: Pipeline arguments, logged as params + config artifact.
        data_source ... device: The remaining pipeline arguments (logged as params).
        tracking_uri: "" = ``$MLFLOW_TRACKING_URI`` (a Secret on the cluster; ``waferflow run`` sets it locally).
    """
    from waferflow.orchestration.runtime import stage, tracking_uri as resolve_uri
    from waferflow.tracking import start_pipeline_run

    with stage("start_run") as rec:
        import os

        config = {"candidates": list(candidates), "train": dict(train_config), "epochs": dict(epochs),
                  "gates": dict(gates), "data_source": data_source, "n_maps": n_maps, "map_size": map_size,
                  "taxonomy": taxonomy, "seed": seed, "input_size": input_size, "pretrained": pretrained,
                  "device": device}
        rid = start_pipeline_run(resolve_uri(tracking_uri), experiment=experiment, run_name=pipeline_run,
                                 config=config, data_manifest=os.path.join(data.path, "data.json"),
                                 tags={"kfp_run": pipeline_run})
        rec.update(run_id=rid)
    return rid


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def log_to_mlflow(
    parent_run_id: str,
    model: Input[Model],
    onnx: Input[Model],
    test_metrics: Input[Artifact],
    int8_metrics: Input[Artifact],
    latency: Input[Artifact],
    trt: Input[Artifact],
    candidates: Input[Artifact],
    test: Input[Dataset],
    train: Input[Dataset],
    val: Input[Dataset],
    tracking_uri: str,
    data: Input[Dataset],
    unlabeled: Input[Dataset],
    gates: dict,
) -> str:
    """Log the selected candidate (params, history, test metrics FP32/INT8, latency, the model folder, the ONNX
    models, the TensorRT record and every candidate's validation metrics) as a nested run, with the drift
    reference built from its training data (``drift_reference/``: the version's run carries it, so drift is
    always judged against the champion's own reference; its PCA is fitted on the train split and its rows are the
    val and test maps, which the model was not fitted on). The data manifest names every split (train, val, test,
    and the unlabeled maps when there are any) with its hash, and each is logged as an input dataset of the run;
    The raw-map pyfunc wraps the ONNX form the gates deploy (``gates``, GateConfig overrides); returns the run
    id."""
    import json
    import os
    import tempfile

    from waferflow.drift.reference import build_reference
    from waferflow.drift.tracking import store_reference
    from waferflow.orchestration.runtime import dataset_file, stage, tracking_uri as resolve_uri
    from waferflow.config import load_config
    from waferflow.gates import GateConfig
    from waferflow.tracking import log_candidate

    def _manifest(art):
        p = os.path.join(art.path, "data.json")
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)

    with stage("log_mlflow", candidate=model.metadata.get("candidate")) as rec:
        manifest = dict(_manifest(data) or {})
        manifest.pop("class_counts", None)  # the whole dataset's counts are the splits' sum, shown per split
        for name, art in (("train", train), ("val", val), ("test", test), ("unlabeled", unlabeled)):
            m = _manifest(art)
            if m is not None:
                manifest[name] = m
        run_id = log_candidate(
            resolve_uri(tracking_uri), parent_run_id, model.path,
            os.path.join(test_metrics.path, "metrics.json"),
            artifacts={"candidates": os.path.join(candidates.path, "candidates.json"),
                       "tensorrt": os.path.join(trt.path, "trt.json")},
            export_dir=onnx.path,
            int8_metrics=os.path.join(int8_metrics.path, "metrics.json"),
            latency=os.path.join(latency.path, "latency.json"),
            data_manifest=manifest,
            run_name=model.metadata.get("candidate"),
            serve_form=load_config(GateConfig, overrides=dict(gates)).deployment_form,
        )
        with tempfile.TemporaryDirectory() as tmp:
            ref = build_reference(model.path, dataset_file(train.path), os.path.join(tmp, "drift_reference"),
                                  holdout=[dataset_file(val.path), dataset_file(test.path)])
            store_reference(resolve_uri(tracking_uri), run_id, ref)
        rec.update(run_id=run_id, drift_reference="drift_reference/")
    return run_id


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register_model(
    run_id: str,
    parent_run_id: str,
    test: Input[Dataset],
    test_metrics: Input[Artifact],
    int8_metrics: Input[Artifact],
    latency: Input[Artifact],
    gates: dict,
    registered_model_name: str,
    tracking_uri: str,
    verdicts: Output[Artifact],
    model: Input[Model],
) -> NamedTuple("Registered", [("version", str), ("passed", bool), ("summary", str)]):
    """Check every gate, then register the logged candidate as a new model version whose tags and model card carry
    every verdict, its interval and a one-line reason; ``challenger`` moves to it. When there is a champion, it
    and the candidate both predict this test set, and "not worse" is a paired test on those maps (McNemar,
    paired bootstrap). ``passed`` drives the ``dsl.If`` around promotion.

    Args:
        run_id: The candidate run (log_to_mlflow).
        gates: GateConfig overrides, e.g. ``{"min_accuracy": 0.95}``.
        model: The candidate's model folder (it predicts the test maps for the paired test).
    """
    import json
    import os
    import tempfile
    from collections import namedtuple

    from waferflow.config import atomic_write_json, load_config
    from waferflow.data.contract import load_dataset
    from waferflow.evaluation import check_classes, metrics_from_logits, predict_dataset, torch_predictor
    from waferflow.gates import GateConfig, check_gates
    from waferflow.models import load_model_dir
    from waferflow.orchestration.runtime import dataset_file, stage, tracking_uri as resolve_uri, versions
    from waferflow.tracking import get_champion, register_candidate

    def _load(art, fname="metrics.json"):
        with open(os.path.join(art.path, fname)) as f:
            return json.load(f)

    uri = resolve_uri(tracking_uri)
    with stage("register", model_name=registered_model_name) as rec:
        cfg = load_config(GateConfig, overrides=dict(gates))
        test_ds = load_dataset(dataset_file(test.path), require_labels=True)

        def _predict(model_dir):
            net, spec = load_model_dir(model_dir)
            check_classes(test_ds, spec)
            logits = predict_dataset(torch_predictor(net), test_ds, spec, desc="predict test")
            return logits, metrics_from_logits(test_ds.labels, logits, spec.class_names)

        preds = _predict(model.path)[0].argmax(1)
        candidate = {"metrics": _load(test_metrics), "int8_metrics": _load(int8_metrics),
                     "latency": _load(latency, "latency.json"), "labels": test_ds.labels, "predictions": preds}
        champion = None
        with tempfile.TemporaryDirectory() as tmp:
            info = get_champion(uri, tmp, name=registered_model_name)
            if info is not None:
                logits, champ_metrics = _predict(info.model_dir)
                champion = {"version": info.version, "metrics": champ_metrics, "predictions": logits.argmax(1)}
                print(f"[waferflow] champion v{info.version} on this test set: "
                      f"accuracy {champion['metrics']['overall']['accuracy']:.4f}")
        report = check_gates(candidate, cfg, champion=champion)
        for r in report.results:
            print(f"[waferflow] gate {r.describe()}")
        print(f"[waferflow] gates {report.reason}")
        version = register_candidate(uri, run_id, report, name=registered_model_name, pipeline_run_id=parent_run_id,
                                     test_data_hash=test.metadata.get("data_hash"),
                                     predictions={"labels": test_ds.labels, "predictions": preds})
        result = report.to_dict()
        result["version"] = str(version)
        os.makedirs(verdicts.path, exist_ok=True)
        atomic_write_json(os.path.join(verdicts.path, "gates.json"), result)
        failed = [r.name for r in report.violations]
        summary = report.reason
        verdicts.metadata.update({"passed": report.passed, "failed": failed, "reason": report.reason,
                                  "version": str(version),
                                  "champion_compared": report.champion_version, "versions": versions()})
        rec.update(version=str(version), passed=report.passed, failed=failed)
    return namedtuple("Registered", ["version", "passed", "summary"])(str(version), bool(report.passed), summary)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote_model(verdicts: Input[Artifact], registered_model_name: str, tracking_uri: str) -> str:
    """Move ``champion`` to the gated version (runs only under ``dsl.If(passed)``; the registry re-checks
    under its lock and records the decision in the audit trail). Returns the champion version after it."""
    import json
    import os

    from waferflow.gates import GateReport
    from waferflow.orchestration.runtime import stage, tracking_uri as resolve_uri
    from waferflow.tracking import promote_if_passing

    with open(os.path.join(verdicts.path, "gates.json")) as f:
        data = json.load(f)
    with stage("promote", version=data["version"]) as rec:
        res = promote_if_passing(resolve_uri(tracking_uri), data["version"], GateReport.from_dict(data),
                                 name=registered_model_name)
        print(f"[waferflow] promotion of v{res.version}: {'promoted' if res.promoted else 'refused'} ({res.reason}); "
              f"champion {res.old_champion} -> {res.new_champion}")
        rec.update(promoted=res.promoted, champion=res.new_champion)
    return str(res.new_champion)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finish_run(status: PipelineTaskFinalStatus, pipeline_run: str, experiment: str, tracking_uri: str):
    """Exit handler: close this pipeline run's MLflow parent run (found by its ``kfp_run`` tag: an exit task
    may not consume other tasks' outputs); when the pipeline failed, record it FAILED with the error and the
    failing task (a FAILED run is created when the failure came before the parent run existed)."""
    from waferflow.orchestration.runtime import stage, tracking_uri as resolve_uri
    from waferflow.tracking import end_run, record_failed_run
    from waferflow.tracking.runs import client_for

    uri = resolve_uri(tracking_uri)
    with stage("finish_run", state=status.state):
        client = client_for(uri)
        exp = client.get_experiment_by_name(experiment)
        runs = [] if exp is None else client.search_runs(
            [exp.experiment_id], filter_string=f"tags.kfp_run = '{pipeline_run}'", max_results=1)
        parent = runs[0].info.run_id if runs else None
        if status.state == "SUCCEEDED":
            if parent:
                end_run(uri, parent, "FINISHED")
        else:
            err = status.error_message or f"pipeline {pipeline_run} ended {status.state}"
            rid = record_failed_run(uri, parent, error=str(err), stage=status.pipeline_task_name or None,
                                    experiment=experiment)
            print(f"[waferflow] recorded the failed pipeline run in MLflow: run {rid} ({status.state}: {err})")
