"""The training pipeline (wiring only).

start MLflow run -> ExitHandler[ data (the unlabeled pool sampled to pool_size) -> split | source model (ImageNet ->
synthetic maps of the data's taxonomy: found in MLflow by its recipe, or pretrained and registered once) -> adaptive
BN (ImageNet and source start points) -> ParallelFor(candidates, ImageNet and +source: train -> evaluate on val) ->
Collected fan-in: select best on validation -> self-training (teacher -> pseudo-labels -> student; the better on
validation goes on; off when rounds is 0 or there is no pool) -> prior correction (the class weights' prior taken
out of the head; off unless the profile's undo_class_weights) -> source interpolation (the weights averaged with the
source model's, batch norm re-estimated, off unless the profile's source_weight; or, with fewer labeled train maps
than the profile's source_ensemble_below, the model and the source model as one mean-probability ensemble) ->
evaluate on test -> export
(ONNX FP32/INT8 + latency) -> evaluate INT8 -> TensorRT compile -> log to MLflow -> gates + register (the version's
tags and model card carry every verdict, so the gates run just before the version is created) -> label queue (the
unlabeled maps worth labeling) -> report; dsl.If(gates passed) -> promote
(inside a small sub-pipeline, see below) ]
-> exit task: close the MLflow run, or record it FAILED with the failing task and error. The MLflow parent run is
tagged with the KFP run's unique id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``), which links it back to the KFP run; the
display name is the same for every submitted run, so the exit task never looks runs up by it.

One DAG definition serves both places: kfp.local runs it as is (kfp 2.17's local orchestrator runs
ParallelFor, Collected, dsl.If, ExitHandler, retries and caching), and the compiled YAML adds what only a
cluster honours (images, GPU node pool, Secret-backed env). kfp.local drops the kfp-kubernetes settings, so the
local launcher (waferflow.orchestration.local) passes the same settings through the environment instead.
"""


from kfp import dsl
from kfp.dsl import Artifact, Input

from waferflow.components.adapt_bn import adapt_batchnorm
from waferflow.components.compile_trt import compile_tensorrt
from waferflow.components.data import prepare_data
from waferflow.components.evaluate import evaluate_model
from waferflow.components.export import export_model
from waferflow.components.label_queue import build_label_queue
from waferflow.components.finish_run import finish_run
from waferflow.components.log_mlflow import log_to_mlflow
from waferflow.components.prior_correction import correct_prior
from waferflow.components.promote_model import promote_model
from waferflow.components.register_model import register_model
from waferflow.components.report import build_report
from waferflow.components.select_best import select_best
from waferflow.components.self_train import self_train_model
from waferflow.components.source_interpolation import interpolate_source
from waferflow.components.source_model import source_model
from waferflow.components.split import split_data
from waferflow.components.start_run import start_run
from waferflow.components.train import train_candidate
from waferflow.pipelines._cluster import place
from waferflow.profiles import Profile, get_profile

PIPELINE_NAME = "waferflow-training"


def candidates_of(profile: Profile, strategies=None) -> list:
    """The candidate list (strategy x backbone) for a profile; an empty ``profile.strategies`` means every
    strategy that ``waferflow.train`` defines (passed in as ``strategies`` by the caller that resolved it)."""
    names = list(profile.strategies) or list(strategies or [])
    if not names:
        from waferflow.train.strategies import STRATEGIES

        names = list(STRATEGIES)
    plain = [{"strategy": s, "backbone": b} for b in profile.backbones for s in names]
    return plain + [{"strategy": s, "backbone": b, "init": "source"} for b in profile.backbones
                    for s in profile.source_strategies]


def _candidates(c, split, adapt, candidates, parallelism, gpu_train, **args):
    """ParallelFor over the candidates: train, then evaluate on validation. Returns (trained, val_eval)."""
    with dsl.ParallelFor(items=candidates, parallelism=parallelism, name="candidates") as cand:
        trained = place(train_candidate(
            train=split.outputs["train"], val=split.outputs["val"], adapted=adapt.outputs["adapted"],
            candidate=cand, **args,
        ).set_display_name("train"), c, gpu_pool=gpu_train)
        val_eval = place(evaluate_model(
            model=trained.outputs["model"], data=split.outputs["val"], split="val", form="torch"
        ).set_display_name("evaluate-val"), c)
    return trained, val_eval


def _deployment_forms(c, best, split, int8, bench_iters, export_options, trt_precision):
    """The selected model on test: evaluated, exported (ONNX FP32/INT8 + latency), INT8 evaluated, TensorRT."""
    test_eval = place(evaluate_model(
        model=best.outputs["model"], data=split.outputs["test"], split="test", form="torch"
    ).set_display_name("evaluate-test"), c)
    exported = place(export_model(
        model=best.outputs["model"], calibration=split.outputs["train"], test=split.outputs["test"], int8=int8,
        bench_iters=bench_iters, options=export_options,
    ).set_display_name("export"), c)
    int8_eval = place(evaluate_model(
        model=exported.outputs["onnx"], data=split.outputs["test"], split="test", form="onnx_int8"
    ).set_display_name("evaluate-int8"), c)
    trt = place(compile_tensorrt(
        onnx=exported.outputs["onnx"], model=best.outputs["model"], calibration=split.outputs["train"],
        test=split.outputs["test"], precision=trt_precision,
    ).set_display_name("compile-tensorrt"), c)
    return {"test": test_eval, "export": exported, "int8": int8_eval, "trt": trt}


def _record(c, started, data, split, best, candidates, forms, gates, registered_model_name, tracking_uri):
    """Log the selected candidate to MLflow, judge the gates and register it. Returns the register task."""
    logged = place(log_to_mlflow(
        parent_run_id=started.output, model=best.outputs["model"], onnx=forms["export"].outputs["onnx"],
        test_metrics=forms["test"].outputs["metrics_json"], int8_metrics=forms["int8"].outputs["metrics_json"],
        latency=forms["export"].outputs["latency"], trt=forms["trt"].outputs["report"],
        candidates=candidates, test=split.outputs["test"], train=split.outputs["train"],
        val=split.outputs["val"], tracking_uri=tracking_uri, data=data.outputs["dataset"],
        unlabeled=data.outputs["unlabeled"], gates=gates,
    ).set_display_name("log-mlflow"), c)
    return place(register_model(
        run_id=logged.output, parent_run_id=started.output, test=split.outputs["test"],
        test_metrics=forms["test"].outputs["metrics_json"], int8_metrics=forms["int8"].outputs["metrics_json"],
        latency=forms["export"].outputs["latency"], gates=gates, registered_model_name=registered_model_name,
        tracking_uri=tracking_uri, model=best.outputs["model"], onnx=forms["export"].outputs["onnx"],
    ).set_display_name("register-and-gate"), c)


def _promote_when_passed(c):
    """The dsl.If lives in a small sub-pipeline whose condition reads its own input: kfp.local 2.17 cannot
    resolve a sibling task's output inside an If condition (it looks it up as a parent input and skips the
    branch), while a sub-DAG input resolves in both places, so one DAG serves the laptop and the cluster."""

    @dsl.pipeline(name="promote-when-passed")
    def promote_when_passed(passed: bool, verdicts: Input[Artifact], registered_model_name: str, tracking_uri: str):
        with dsl.If(passed == True, name="gates-passed"):  # noqa: E712 (KFP condition)
            place(promote_model(
                verdicts=verdicts, registered_model_name=registered_model_name, tracking_uri=tracking_uri,
            ).set_display_name("promote"), c)

    return promote_when_passed


def build_pipeline(profile: Profile | None = None):
    """Build the training pipeline with ``profile``'s values as parameter defaults and its cluster options.

    Args:
        profile: Defaults to the ``local`` profile.

    Returns:
        The ``@dsl.pipeline`` (a kfp GraphComponent): call it under ``kfp.local`` or compile it.
    """
    p = profile or get_profile("local")
    c = p.cluster
    default_candidates = candidates_of(p)
    promote_when_passed = _promote_when_passed(c)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="waferflow: transfer-learning factory for wafer-map defect classifiers "
        "(train candidates, select, evaluate, export, gate, promote).",
    )
    def training_pipeline(
        data_source: str = p.data,
        data_fingerprint: str = "",
        unlabeled_source: str = p.unlabeled,
        unlabeled_fingerprint: str = "",
        n_maps: int = p.n_maps,
        map_size: int = p.map_size,
        taxonomy: str = p.taxonomy,
        seed: int = p.seed,
        labels_per_class: int = p.labels_per_class,
        val_fraction: float = p.val_fraction,
        test_fraction: float = p.test_fraction,
        pool_size: int = p.pool_size,
        backbones: list = list(p.backbones),
        candidates: list = default_candidates,
        source_settings: dict = dict(p.source),
        self_training: dict = dict(p.self_training),
        undo_class_weights: bool = p.undo_class_weights,
        source_weight: float = p.source_weight,
        source_ensemble_below: int = p.source_ensemble_below,
        input_size: int = p.input_size,
        pretrained: str = p.pretrained,
        train_config: dict = dict(p.train),
        epochs: dict = dict(p.epochs),
        device: str = p.device,
        int8: bool = p.int8,
        trt_precision: str = "fp16",
        bench_iters: int = p.bench_iters,
        export_options: dict = dict(p.export),
        gates: dict = dict(p.gates),
        label_queue: int = p.label_queue,
        registered_model_name: str = p.registered_model_name,
        experiment: str = p.experiment,
        tracking_uri: str = "",
    ):
        on_exit = place(finish_run(
            pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER, experiment=experiment, tracking_uri=tracking_uri
        ).set_display_name("finish-mlflow-run"), c)

        with dsl.ExitHandler(on_exit, name="waferflow-training-run"):
            data = place(prepare_data(
                source=data_source, source_fingerprint=data_fingerprint, n_maps=n_maps, map_size=map_size,
                taxonomy=taxonomy, seed=seed, pool_size=pool_size, unlabeled_source=unlabeled_source,
                unlabeled_fingerprint=unlabeled_fingerprint,
            ).set_display_name("data"), c)
            started = place(start_run(
                experiment=experiment, pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER, data=data.outputs["dataset"],
                candidates=candidates, train_config=train_config, epochs=epochs, gates=gates,
                data_source=data_source, unlabeled_source=unlabeled_source, n_maps=n_maps, map_size=map_size,
                taxonomy=taxonomy, seed=seed, input_size=input_size, pretrained=pretrained, device=device,
                tracking_uri=tracking_uri,
            ).set_display_name("start-mlflow-run"), c)
            split = place(split_data(
                dataset=data.outputs["dataset"], labels_per_class=labels_per_class, seed=seed,
                val_fraction=val_fraction, test_fraction=test_fraction,
            ).set_display_name("split"), c)
            source = place(source_model(
                dataset=data.outputs["dataset"], settings=source_settings, backbones=backbones,
                input_size=input_size, pretrained=pretrained, device=device, tracking_uri=tracking_uri,
            ).set_display_name("source-model"), c, gpu_pool=p.device == "cuda")
            adapt = place(adapt_batchnorm(
                train=split.outputs["train"], unlabeled=data.outputs["unlabeled"], backbones=backbones,
                input_size=input_size, pretrained=pretrained, seed=seed, sources=source.outputs["sources"],
            ).set_display_name("adapt-bn"), c)
            trained, val_eval = _candidates(
                c, split, adapt, candidates, p.parallelism, p.device == "cuda", train_config=train_config,
                epochs=epochs, input_size=input_size, device=device, seed=seed)
            selected = place(select_best(
                models=dsl.Collected(trained.outputs["model"]),
                val_metrics=dsl.Collected(val_eval.outputs["metrics_json"]),
            ).set_display_name("select-best"), c)
            taught = place(self_train_model(
                teacher=selected.outputs["best"], train=split.outputs["train"], val=split.outputs["val"],
                unlabeled=data.outputs["unlabeled"], settings=self_training, train_config=train_config,
                device=device, seed=seed,
            ).set_display_name("self-train"), c, gpu_pool=p.device == "cuda")
            corrected = place(correct_prior(trained=taught.outputs["model"], val=split.outputs["val"],
                                            undo_class_weights=undo_class_weights)
                              .set_display_name("prior-correction"), c)
            best = place(interpolate_source(
                trained=corrected.outputs["model"], adapted=adapt.outputs["adapted"], train=split.outputs["train"],
                unlabeled=data.outputs["unlabeled"], val=split.outputs["val"], source_weight=source_weight, seed=seed,
                source_ensemble_below=source_ensemble_below, tracking_uri=tracking_uri,
            ).set_display_name("source-interpolation"), c)
            forms = _deployment_forms(c, best, split, int8, bench_iters, export_options, trt_precision)
            reg = _record(c, started, data, split, best, selected.outputs["candidates"], forms, gates,
                          registered_model_name, tracking_uri)
            queue = place(build_label_queue(
                model=best.outputs["model"], unlabeled=data.outputs["unlabeled"], n=label_queue,
            ).set_display_name("label-queue"), c)
            report = place(build_report(
                candidates=selected.outputs["candidates"], test_metrics=forms["test"].outputs["metrics_json"],
                latency=forms["export"].outputs["latency"], trt=forms["trt"].outputs["report"],
                verdicts=reg.outputs["verdicts"], queue=queue.outputs["queue"],
            ).set_display_name("report"), c)
            gated = promote_when_passed(
                passed=reg.outputs["passed"], verdicts=reg.outputs["verdicts"],
                registered_model_name=registered_model_name, tracking_uri=tracking_uri,
            ).set_display_name("promote-if-gates-passed")
            gated.after(report)

    return training_pipeline


#: The pipeline with the ``local`` profile's defaults (what ``waferflow compile`` writes by default).
training_pipeline = build_pipeline()
