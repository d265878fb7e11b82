"""``waferflow run | compile | upload | submit | schedule``: the pipeline commands."""

from __future__ import annotations

import argparse
import json
import os

from waferflow.errors import ConfigError

_RUN_EPILOG = """examples:
  waferflow run                                   # local profile: 10,000 synthetic maps, every strategy, CPU
  waferflow run --data LSWMD.pkl                  # your own maps (.npz, LSWMD.pkl, PNG folders); --data implies
                                                  # --profile real: source model, candidates, self-training, gates
                                                  # for a small real test set
  waferflow run --data labeled.npz --unlabeled pool.npz   # labeled maps, and unlabeled ones as the pool (a PNG
                                                  # folder's unlabeled/ subfolder is its pool too)
  waferflow run --data labeled.npz --set 'source={}' --set 'source_strategies=[]'   # ImageNet-only candidates
  waferflow run --profile tiny                    # a smoke run of a few minutes
  waferflow run --profile tiny --runner docker    # each task in the CPU image (images/build.sh builds it)
  waferflow run --set n_maps=4000 --set 'strategies=[full_finetune]' --set gates.min_accuracy=0.95

few labels, many unlabeled maps (--set KEY=VALUE; the real profile's values in parentheses):
  labels_per_class=N          keep only N labeled training maps per class (0 = all)
  val_fraction=F / test_fraction=F
                              labeled maps (lots, where lots exist) held out for validation (early stopping,
                              selection) and for the test the gates read (0.1 / 0.1)
  input_size=N                model input side in pixels; WM-811K maps are resized to it (80)
  pool_size=N                 unlabeled maps kept for self-training, sampled evenly over lots (20000)
  train.steps=N               optimizer steps per candidate, whatever the data size (600)
  train.min_epochs=N          at least N epochs however many steps that takes, for big labeled sets that 600
                              steps would cut to a few passes (0 = off; candidates only: students keep their own)
  train.patience_steps=N      early stopping: steps without a validation macro-F1 gain (200)
  train.rotation=D            rotate half the training maps (a share train.rotation_prob) by up to D degrees
                              about the centre, on top of the 8 flips and quarter turns (45; 0 = off); only for
                              classes any rotation keeps, as WM-811K's
  train.ema_decay=D           validate, early-stop and keep a moving average of the weights (timm ModelEmaV3,
                              e.g. 0.99; 0 = off, as in every profile: it lost on development maps, README)
  source.n_maps / source.map_size / source.train.epochs
                              the synthetic source model's recipe (8000 / 64 / 12); registered once as
                              wafer-source-<taxonomy> and reused by later runs; source={} turns it off
  source.synth.pattern_ranges.PATTERN.PARAM=[LO,HI]
                              the ranges the source maps' patterns are drawn from (e.g. loc.radius=[0.1,0.55];
                              table in docs/TAXONOMY.md; unset: the generator as tuned; a development lead,
                              not the recipe: README)
  source_strategies=[...]     strategies fine-tuned from the source model ([full_finetune])
  self_training.rounds=N      teacher -> pseudo-labels -> student rounds (2; 0 = off)
  self_training.threshold=P   minimum TTA confidence of a pseudo-label (0.9)
  self_training.max_per_class_ratio=R   pseudo-labels per class at most R x its labeled maps (3)
  self_training.tta_rotations=[D,...]   pseudo-labels also average the pool maps turned by these angles, as
                              export.tta_rotations do ([] = the model's symmetries alone, as in every profile:
                              [45] lost on development maps, README)
  self_training.cpu_engine=E  what runs the teacher over the pool on the CPU: onnxruntime (traced in memory,
                              checked against PyTorch; 2.45x faster) | torch (onnxruntime)
  self_training.synthetic_min_per_class=N   top each student's classes up to N maps with synthetic maps of
                              the data's taxonomy (0 = off; a development lead, not the recipe: README)
  self_training.synthetic_classes_below=N   only the classes with fewer than N labeled maps (0 = every class)
  self_training.train.unlabeled_weight=W   students also learn from the whole pool by consistency (FixMatch: the
                              student's confident prediction on a flipped or turned map is the target of the same
                              map under the full augmentation; 0 = off, as in every profile: it lost on
                              development maps, README; .unlabeled_threshold 0.95, .unlabeled_ratio 1)
  train.class_weights=MODE    none | sqrt | inverse: loss weights that help rare classes train (sqrt)
  train.mixup_alpha=A         mixup of each labeled batch with itself, lam ~ Beta(A, A), in the whole-model steps
                              of the candidates and the students (0 = off, as in every profile: README)
  undo_class_weights=BOOL     take the prior those weights train in out of the final model's head, so it scores
                              maps under the data's own class prior (true)
  source_weight=W             then average the model's weights with the source model's it was fine-tuned from, W
                              of them the source's, and re-estimate batch norm on the run's maps (WiSE-FT; 0 = off;
                              a development lead, not the recipe: README)
  source_ensemble_below=N     with fewer than N labeled training maps, deploy the model and the source model as
                              one mean-probability ensemble (two forward passes per map; 1000; 0 = off)
  export.tta_rotations=[D,...]  the deployed TTA graph also averages the views of each map turned by these
                              angles, as train.rotation turns maps ([45]: 16 views; [] = the 8 alone)
"""


def _add_profile_args(p: argparse.ArgumentParser, default: str | None, help_default: str | None = None) -> None:
    from waferflow.profiles import PROFILE_NAMES

    p.add_argument("--profile", default=default, choices=PROFILE_NAMES,
                   help=f"run profile (default {help_default or default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="profile override, YAML value, dots for nesting (repeatable), e.g. epochs.full_finetune=3")


def _add_remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT", ""),
                   help="Kubeflow Pipelines API URL (default $KF_PIPELINES_ENDPOINT); token from $KFP_TOKEN")
    p.add_argument("--pipeline", default="training", choices=("training", "drift-monitor"), help="which pipeline")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline argument (YAML value; repeatable)")
    p.add_argument("--experiment", default=None, help="KFP experiment (default: the profile's)")
    p.add_argument("--namespace", default=None, help="Kubeflow namespace (multi-user installs)")
    p.add_argument("--service-account", default=None,
                   help="Kubernetes service account of the run's pods (default: cluster.service_account, "
                   "waferflow-pipeline)")
    p.add_argument("--registry", default=None, help="image registry prefix (overrides cluster.image_registry)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="the main job: the whole training pipeline locally through kfp.local",
        description="Run the whole training pipeline (data, split, adaptive BN, candidates, selection, "
        "evaluation, export, TensorRT, registry, gates, promotion) on this machine through kfp.local, with "
        "the embedded MLflow store under the workdir.",
        epilog=_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_profile_args(p, None, "local; real with --data")
    p.add_argument("--data", default=None, help="your own maps (.npz, LSWMD.pkl or a folder of PNGs per class) "
                   "instead of synthetic ones")
    p.add_argument("--unlabeled", default=None,
                   help="more unlabeled maps for the pool (.npz, LSWMD.pkl or a PNG folder; labels in it are "
                   "ignored), joined with the unlabeled maps of --data; needs --data")
    p.add_argument("--workdir", default="waferflow_runs", help="outputs, kfp cache and MLflow store (default "
                   "./waferflow_runs)")
    p.add_argument("--no-cache", action="store_true", help="run every task even when its cached output is valid")
    p.add_argument("--runner", default="subprocess", choices=("subprocess", "docker"),
                   help="subprocess: every task in this venv (default); docker: every task in the CPU image "
                   "<cluster.image_registry>/waferflow-cpu:<version> through a running Docker daemon")
    p.add_argument("--json", action="store_true", help="print the run record as JSON at the end")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("compile", help="write every pipeline's YAML (training, drift monitor)",
                              description="Compile every pipeline in waferflow.pipelines to DIR/<name>.yaml "
                              "with the profile's cluster options (images, GPU node pool, Secret).")
    _add_profile_args(p, "full")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--registry", default=None, help="image registry prefix (overrides cluster.image_registry)")
    p.set_defaults(func=cmd_compile)

    p = subparsers.add_parser("upload", help="upload a pipeline as a new version on a Kubeflow host, so the UI "
                              "can create runs from it",
                              description="Compile a pipeline with the profile's cluster options and upload it as a "
                              "new pipeline version (the pipeline is created on first upload).")
    _add_profile_args(p, "full")
    p.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT", ""),
                   help="Kubeflow Pipelines API URL (default $KF_PIPELINES_ENDPOINT); token from $KFP_TOKEN")
    p.add_argument("--pipeline", default="training", choices=("training", "drift-monitor"), help="which pipeline")
    p.add_argument("--version", default=None, help="version name (default <package version>-<UTC time>)")
    p.add_argument("--namespace", default=None, help="Kubeflow namespace (multi-user installs)")
    p.add_argument("--registry", default=None, help="image registry prefix (overrides cluster.image_registry)")
    p.set_defaults(func=cmd_upload)

    p = subparsers.add_parser("submit", help="start a pipeline run on a Kubeflow host (kfp.Client)")
    _add_profile_args(p, "full")
    _add_remote_args(p)
    p.add_argument("--run-name", default=None, help="display name of the run")
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("schedule", help="create a recurring pipeline run on a Kubeflow host (kfp.Client)")
    _add_profile_args(p, "full")
    _add_remote_args(p)
    p.add_argument("--cron", required=True, help="KFP cron, seconds first: '0 0 3 * * 1' = 03:00 every Monday "
                   "(5-field crons get seconds=0)")
    p.add_argument("--name", default=None, help="recurring run name")
    p.add_argument("--max-concurrency", type=int, default=1, help="runs allowed at once (default 1)")
    p.set_defaults(func=cmd_schedule)


def _profile(args, extra: dict | None = None):
    from waferflow.profiles import get_profile

    overrides = list(args.overrides)
    if args.func is not cmd_run:
        overrides = env_overrides(os.environ.get("WAFERFLOW_SET", "")) + overrides
    if getattr(args, "registry", None):
        overrides.append(f"cluster.image_registry={args.registry}")
    if extra:
        overrides += [f"{k}={v}" for k, v in extra.items()]
    return get_profile(args.profile, overrides)


def env_overrides(text: str) -> list[str]:
    """``WAFERFLOW_SET``: profile overrides from a ConfigMap, one ``key=value`` per line.

    One item a line, so that a value may hold spaces and quotes (a JSON node selector); blank lines and lines
    starting with ``#`` are skipped.

    Raises:
        ConfigError: A line that is not ``key=value``.
    """
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"WAFERFLOW_SET line {n} ({line!r}) is not key=value; write one override a line, "
                              "e.g. cluster.gpu_limit=1")
        items.append(line)
    return items


def _params(items: list[str]) -> dict:
    from waferflow.config import parse_override

    out = {}
    for it in items:
        k, v = parse_override(it)
        out[k] = v
    return out


def cmd_run(args) -> int:
    from waferflow.orchestration.local import format_result, run_local

    extra = {}
    if args.data:
        if not os.path.exists(args.data):
            raise ConfigError(f"--data {args.data} does not exist; give a .npz, an LSWMD.pkl or a folder of PNGs")
        extra["data"] = os.path.abspath(args.data)
    if args.unlabeled:
        if not args.data:
            raise ConfigError("--unlabeled adds maps to the pool of a run on your own labeled maps; give those "
                              "with --data (the synthetic main job has no pool)")
        if not os.path.exists(args.unlabeled):
            raise ConfigError(f"--unlabeled {args.unlabeled} does not exist; give a .npz, an LSWMD.pkl or a "
                              "folder of PNGs")
        extra["unlabeled"] = os.path.abspath(args.unlabeled)
    if args.profile is None:
        args.profile = "real" if args.data else "local"
    profile = _profile(args, extra)
    result = run_local(profile, workdir=args.workdir, cache=not args.no_cache, runner=args.runner)
    print(format_result(result))
    if args.json:
        print(json.dumps({"wall_seconds": result.wall_seconds, "stages": result.stages, "cache_hits": result.cache_hits,
                          "champion": result.champion, "run_dir": str(result.run_dir)}, indent=2))
    return 0


def cmd_compile(args) -> int:
    from waferflow.orchestration.cluster import compile_all

    written = compile_all(args.out, _profile(args))
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def cmd_upload(args) -> int:
    from waferflow.orchestration.cluster import upload

    r = upload(args.host, _profile(args), pipeline=args.pipeline, version=args.version, namespace=args.namespace)
    what = "created pipeline" if r["created_pipeline"] == "true" else "pipeline"
    print(f"{what} {r['pipeline_name']} ({r['pipeline_id']}): uploaded version {r['version_name']} "
          f"({r['version_id']}) to {args.host}")
    return 0


def cmd_submit(args) -> int:
    from waferflow.orchestration.cluster import submit

    run_id = submit(args.host, _profile(args), pipeline=args.pipeline, arguments=_params(args.params),
                    experiment=args.experiment, run_name=args.run_name, namespace=args.namespace,
                    service_account=args.service_account)
    print(f"started run {run_id} on {args.host}")
    return 0


def cmd_schedule(args) -> int:
    from waferflow.orchestration.cluster import schedule

    rid = schedule(args.host, _profile(args), cron=args.cron, pipeline=args.pipeline, name=args.name,
                   arguments=_params(args.params), experiment=args.experiment, namespace=args.namespace,
                   max_concurrency=args.max_concurrency, service_account=args.service_account)
    print(f"created recurring run {rid} on {args.host} (cron '{args.cron}')")
    return 0


