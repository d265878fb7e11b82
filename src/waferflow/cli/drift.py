"""``waferflow drift``, ``waferflow drift-reference`` and ``waferflow demo drift``.

Heavy imports (torch, evidently, mlflow, kfp) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from waferflow.errors import ConfigError


def _pos_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    from waferflow.drift.config import DriftConfig

    d = DriftConfig()
    g = p.add_argument_group("thresholds (calibrated at 1,000 maps a batch; see docs/DRIFT.md)")
    g.add_argument("--share-threshold", type=_pos_float, default=d.share_threshold,
                   help=f"drift when this share of readable features drifted (default {d.share_threshold})")
    g.add_argument("--feature-threshold", type=_pos_float, default=d.feature_threshold,
                   help="a feature drifted at this normed Wasserstein distance, in reference std units "
                        f"(default {d.feature_threshold})")
    g.add_argument("--embedding-threshold", type=_pos_float, default=d.embedding_threshold,
                   help="drift when a domain classifier on the champion's embeddings reaches this ROC AUC "
                        f"(default {d.embedding_threshold})")
    g.add_argument("--prediction-threshold", type=_pos_float, default=d.prediction_threshold,
                   help="drift when the predicted-class mix moves by this Jensen-Shannon distance "
                        f"(default {d.prediction_threshold})")


def _add_retrain(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retraining")
    g.add_argument("--profile", default="local", help="training profile of the retrain (default local)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="profile override for the retrain, e.g. --set n_maps=2000 (repeatable)")
    g.add_argument("--train-data", default=None,
                   help="base training data (.npz) that labeled new maps join (default: the new maps alone)")
    g.add_argument("--host", default=None,
                   help="Kubeflow Pipelines host: submit the retrain there with kfp.Client (default: run it "
                        "here through kfp.local); its inputs go to the pods through the decision's MLflow run, so "
                        "the tracking store must be a server (--tracking-uri or $MLFLOW_TRACKING_URI); the profile "
                        "takes $WAFERFLOW_SET's overrides, then --set's")
    g.add_argument("--namespace", default=None, help="Kubeflow namespace for --host")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the drift subcommands to the ``waferflow`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "drift", help="check new wafer maps for drift against the champion (and retrain)", formatter_class=fmt,
        description="Compare a batch of new maps with the champion's reference data: an evidently report on\n"
                    "readable map features, the champion's embeddings and its predicted-class mix. Writes\n"
                    "DIR/report.html, DIR/report.json and DIR/decision.json, and logs the decision to MLflow.\n"
                    "With --retrain and drift found, starts the training pipeline (kfp.local, or --host).",
        epilog="example: waferflow drift --current new_maps.npz --out drift_out --retrain",
    )
    p.add_argument("--current", required=True, help="new maps: a dataset .npz (labeled or not) or an LSWMD.pkl")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None,
                   help="model dir or models:/NAME@champion (default: the registry's champion)")
    p.add_argument("--reference", default=None,
                   help="reference folder (default: the one stored with the model, <model>/drift_reference)")
    p.add_argument("--retrain", action="store_true", help="start the training pipeline when drift is found")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else <workdir>/mlflow.db)")
    p.add_argument("--workdir", default="waferflow_runs", help="workdir of the local store and runs")
    p.add_argument("--registered-model", default="wafer-defect-classifier", help="registered model name")
    _add_thresholds(p)
    _add_retrain(p)
    p.set_defaults(func=_cmd_drift)

    r = sub.add_parser(
        "drift-reference", help="build a model's drift reference from its training data", formatter_class=fmt,
        description="Write the reference the drift check compares with: readable features and the model's view\n"
                    "of (a sample of) its data, the PCA of its embeddings (fitted on --data) and a summary.\n"
                    "Give --holdout with the val/test maps of the same data: the model is over-confident on\n"
                    "maps it was fitted on, so those make a biased reference. Without --holdout the rows are\n"
                    "the half of --data the PCA was not fitted on.",
        epilog="example: waferflow drift-reference --model runs/model --data data/train.npz "
               "--holdout data/val.npz data/test.npz",
    )
    r.add_argument("--model", required=True, help="model dir")
    r.add_argument("--data", required=True, help="the model's training data (.npz)")
    r.add_argument("--holdout", nargs="+", default=None, metavar="NPZ",
                   help="held-out maps of the same data (val/test .npz): the reference rows")
    r.add_argument("--out", default=None, help="reference folder (default <model>/drift_reference)")
    r.add_argument("--max-rows", type=int, default=5000, help="sample at most this many maps (default 5000)")
    r.add_argument("--store-run", default=None, metavar="RUN_ID",
                   help="also log it as the drift_reference/ artifact of this MLflow run (the model version's)")
    r.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI for --store-run (default: $MLFLOW_TRACKING_URI, else ./mlflow.db, "
                        "else the store of `waferflow run`, ./waferflow_runs/mlflow.db)")
    r.set_defaults(func=_cmd_reference)

    d = sub.add_parser("demo", help="demonstrations on this machine", formatter_class=fmt)
    dsub = d.add_subparsers(dest="demo", metavar="DEMO")
    dsub.required = True
    dd = dsub.add_parser(
        "drift", help="the drift loop: clean batch, shifted batch, drift found, retrain started",
        formatter_class=fmt,
        description="Shows the drift loop end to end on this machine: uses the champion of the local store (or\n"
                    "trains a quick one through kfp.local), checks a clean batch (no drift), then a shifted batch\n"
                    "(new defect mix, higher background fail rate, different die grid), finds drift and starts a\n"
                    "retrain through kfp.local.",
    )
    dd.add_argument("--workdir", default="waferflow_demo_drift", help="demo folder (default waferflow_demo_drift)")
    dd.add_argument("--n", type=int, default=1000, help="maps per batch (default 1000)")
    dd.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    dd.add_argument("--no-retrain", action="store_true", help="stop after the decision (no training run)")
    dd.set_defaults(func=_cmd_demo)


def _cfg(args):
    from waferflow.drift.config import DriftConfig

    return DriftConfig(share_threshold=args.share_threshold, feature_threshold=args.feature_threshold,
                       embedding_threshold=args.embedding_threshold, prediction_threshold=args.prediction_threshold)


def make_launcher(profile: str, overrides: list[str], workdir: str | Path, host: str | None = None,
                  namespace: str | None = None, out=None):
    """A launcher ``plan -> dict`` for the training pipeline: kfp.local here, or kfp.Client on ``host``.

    On a cluster the retrain's pods cannot read this machine's disk: the plan's local files are logged as artifacts
    of the drift decision's MLflow run and handed over as ``runs:/`` URIs (as the drift-monitor pipeline does), and
    the profile takes ``WAFERFLOW_SET``'s overrides before ``overrides``, as ``waferflow submit`` does.
    """
    import dataclasses

    from waferflow.orchestration.retrain import retrain_profile

    if host:
        from waferflow.cli.pipeline import env_overrides

        cluster_overrides = env_overrides(os.environ.get("WAFERFLOW_SET", "")) + list(overrides)

        def launch_cluster(plan) -> dict:
            from waferflow.orchestration.retrain import submit_retrain

            inputs = _cluster_inputs(plan)
            return submit_retrain(inputs, plan.drift_run, plan.tracking_uri, host, profile=profile,
                                  overrides=cluster_overrides, cluster={}, namespace=namespace, out=out)

        return launch_cluster

    def launch_local(plan) -> dict:
        from waferflow.orchestration.local import run_local

        res = run_local(retrain_profile(dataclasses.asdict(plan), profile, overrides, cluster={}), workdir=workdir,
                        out=out)
        return {"where": "kfp.local", "run_dir": str(res.run_dir), "champion": res.champion,
                "version": res.summary.get("version"),
                "wall_seconds": res.wall_seconds}

    return launch_local


def _cluster_inputs(plan) -> dict:
    """The plan's inputs, checked for a cluster: local files need the drift decision's MLflow run to travel in.

    Raises:
        ConfigError: Local files, but the decision was not logged to MLflow.
    """
    import dataclasses

    from waferflow.orchestration.sources import RETRAIN_INPUTS, is_remote

    inputs = dataclasses.asdict(plan)
    if [k for k in RETRAIN_INPUTS if inputs.get(k) and not is_remote(inputs[k])] and not plan.drift_run:
        raise ConfigError("a cluster retrain reads its inputs through the drift decision's MLflow run, and this "
                          "decision was not logged; log it (the default) to a tracking server the cluster uses")
    return inputs


def _refuse_local_store_for_cluster(args) -> None:
    """``--host``: the retrain's pods read its inputs through MLflow, so the store must be a server, not this disk."""
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri or uri.split(":", 1)[0] in ("sqlite", "file") or uri.startswith(("/", ".", "~")):
        where = uri or f"the embedded store under {args.workdir}"
        raise ConfigError(f"--host: the cluster's pods read the retrain's inputs through MLflow, and {where} is a "
                          "store on this machine's disk; pass --tracking-uri (or set MLFLOW_TRACKING_URI to) the "
                          "tracking server your cluster uses")


def _cmd_drift(args) -> int:
    from waferflow.drift.check import run_drift_check

    cfg = _cfg(args)
    if not args.retrain and (args.host or args.train_data or args.overrides):
        raise ConfigError("--host/--train-data/--set only apply with --retrain; add --retrain or drop them")
    if args.host:
        _refuse_local_store_for_cluster(args)
    launcher = make_launcher(args.profile, args.overrides, args.workdir, args.host, args.namespace) \
        if args.retrain else None
    d = run_drift_check(args.current, args.out, model=args.model, reference=args.reference, cfg=cfg,
                    tracking_uri=args.tracking_uri, workdir=args.workdir,
                    registered_model_name=args.registered_model, retrain=args.retrain, launcher=launcher,
                    train_data=args.train_data)
    _print_decision(d)
    return 0


def _print_decision(d: dict, out=None) -> None:
    out = out or sys.stdout
    verdict = "DRIFT DETECTED" if d["drift_detected"] else "no drift"
    print(f"{verdict}: {d['n_current']} maps vs {d['n_reference']} reference maps of {d.get('model')}", file=out)
    print(f"  drifted readable features: {d['share']:.2f} share ({', '.join(d['drifted_features']) or 'none'})",
          file=out)
    print(f"  embedding drift (domain-classifier AUC): {d['embedding_score']:.3f}; "
          f"prediction-mix JS: {d['prediction_js']:.3f}", file=out)
    for r in d["reasons"]:
        print(f"  reason: {r}", file=out)
    if d.get("to_label"):
        print(f"  {d['to_label']} unlabeled maps to label (least confident first): {d['to_label_file']}", file=out)
    if d.get("retrain"):
        print(f"  retrain: {json.dumps(d['retrain'], default=str)}", file=out)
    print(f"  report: {d['report_html']}", file=out)
    print(f"  decision: {Path(d['report_html']).parent / 'decision.json'}", file=out)


def _cmd_reference(args) -> int:
    from waferflow.drift.reference import build_reference

    uri = None
    if args.store_run:  # the store `waferflow run` and the registry commands use; a missing one is refused first
        from waferflow.cli.registry import store_uri

        uri = store_uri(args)
    out = build_reference(args.model, args.data, args.out, max_rows=args.max_rows, holdout=args.holdout)
    print(f"drift reference written to {out}")
    if args.store_run:
        from waferflow.drift.store import store_reference

        store_reference(uri, args.store_run, out)
        print(f"stored as artifact drift_reference/ of run {args.store_run} ({uri})")
    return 0


def _cmd_demo(args) -> int:
    from waferflow.drift.demo import run_demo

    run_demo(workdir=args.workdir, n=args.n, seed=args.seed, retrain=not args.no_retrain,
             launcher_factory=make_launcher)
    return 0
