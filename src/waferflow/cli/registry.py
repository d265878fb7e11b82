"""``waferflow registry list|show|history|promote|rollback``: review the MLflow registry and its audit trail."""

from __future__ import annotations

import argparse
import json
import os
import sys

from waferflow.config import progress_enabled
from waferflow.errors import RegistryError

DEFAULT_NAME = "wafer-defect-classifier"
#: `waferflow run`'s default --workdir, where its embedded MLflow store lives.
RUN_WORKDIR = "waferflow_runs"


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db, else "
                        "the store of `waferflow run`: sqlite:///./waferflow_runs/mlflow.db)")
    common.add_argument("--name", default=DEFAULT_NAME, help=f"registered model name (default {DEFAULT_NAME})")
    p = subparsers.add_parser("registry", help="review the model registry: versions, gates, model cards, audit trail",
                              description="Review the MLflow model registry: list versions with their gate "
                              "results, show a version's model card, see who moved which alias and why, promote a "
                              "version by hand (recorded) or roll champion back.")
    sub = p.add_subparsers(dest="registry_command", metavar="ACTION")
    sub.required = True

    s = sub.add_parser("list", parents=[common], help="versions with aliases, gate verdicts and key metrics")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_list)

    s = sub.add_parser("show", parents=[common], help="one version: gate results and model card")
    s.add_argument("version")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_show)

    s = sub.add_parser("history", parents=[common], help="the audit trail of alias changes and decisions")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_history)

    s = sub.add_parser("promote", parents=[common],
                       help="manual override: make VERSION champion regardless of gates (recorded)")
    s.add_argument("version")
    s.add_argument("--reason", required=True, help="why a person overrides the gates (goes into the audit trail)")
    s.add_argument("--actor", default=None, help="who (default $USER)")
    s.set_defaults(func=_promote)

    s = sub.add_parser("rollback", parents=[common], help="move champion back to the previous champion (recorded)")
    s.add_argument("--reason", required=True, help="why (goes into the audit trail)")
    s.add_argument("--actor", default=None, help="who (default $USER)")
    s.set_defaults(func=_rollback)


def store_uri(args) -> str:
    """The MLflow store a command that reads the registry uses: ``--tracking-uri``, ``$MLFLOW_TRACKING_URI``,
    ``./mlflow.db``, else ``waferflow run``'s ``./waferflow_runs/mlflow.db``.

    Raises:
        RegistryError: The store is a sqlite file that does not exist.
    """
    from waferflow.tracking import resolve_tracking_uri

    # Our RetryPolicy bounds each call; mlflow's own HTTP retries would multiply it (7 tries, long backoff).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    if not progress_enabled():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # With no URI given: ./mlflow.db, else the store `waferflow run` writes (./waferflow_runs/mlflow.db).
    workdir = os.getcwd()
    if not os.path.exists("mlflow.db") and os.path.exists(os.path.join(RUN_WORKDIR, "mlflow.db")):
        workdir = os.path.abspath(RUN_WORKDIR)
    uri = resolve_tracking_uri(args.tracking_uri, workdir)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise RegistryError(f"no MLflow store at {uri}; pass --tracking-uri (e.g. sqlite:///RUN_DIR/mlflow.db or "
                            "http://HOST:5000) or set MLFLOW_TRACKING_URI")
    return uri


def _need_model(fn):
    """Turn 'registered model not found' into a message that says what to do."""
    def wrapper(args):
        from mlflow.exceptions import MlflowException

        try:
            return fn(args)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"{e.message.splitlines()[0]} at {args.tracking_uri or 'the default store'}; "
                                    "check --name / --tracking-uri, or run the pipeline to register a model") from e
            raise RegistryError(f"MLflow error: {e.message}") from e
    return wrapper


def _fmt(v, nd=4):
    return f"{v:.{nd}f}" if isinstance(v, float) else ("-" if v is None else str(v))


@_need_model
def _list(args) -> int:
    from waferflow.tracking import list_versions

    rows = list_versions(store_uri(args), name=args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"'{args.name}' has no versions")
        return 0
    hdr = f"{'ver':>4}  {'aliases':<22} {'gates':<6} {'acc':>7} {'macroF1':>7} {'minRec':>7} {'p99ms':>7}  " \
          f"{'strategy':<20} {'backbone':<22} created / failed gates"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        m = r["metrics"]
        verdict = {"true": "PASS", "false": "FAIL"}.get(r["gates_passed"], "?")
        extra = r["created"] + ("" if verdict != "FAIL" else f"  [{r['violations']}]")
        print(f"{r['version']:>4}  {','.join(r['aliases']) or '-':<22} {verdict:<6} {_fmt(m.get('accuracy')):>7} "
              f"{_fmt(m.get('macro_f1')):>7} {_fmt(m.get('per_class_recall')):>7} "
              f"{_fmt(m.get('p99_latency_ms'), 2):>7}  {str(r['strategy']):<20} {str(r['backbone']):<22} {extra}")
    return 0


@_need_model
def _show(args) -> int:
    from waferflow.tracking import show_version

    info = show_version(store_uri(args), args.version, name=args.name)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    t = info["tags"]
    print(f"{args.name} version {info['version']}   aliases: {', '.join(info['aliases']) or '-'}")
    print(f"run {info['run_id']}   source {info['source']}")
    print(f"strategy {t.get('strategy')}   backbone {t.get('backbone')}   data {t.get('data_hash', '')[:16]}   "
          f"git {t.get('git_commit', '')[:12]}")
    print(f"weights {t.get('weights_origin', 'unknown')}   source model {t.get('source_model', 'unknown')}   "
          f"served form {t.get('served_form', t.get('deployment_form', '?'))}")
    gates = info.get("gates")
    if gates:
        from waferflow.gates import GateReport

        rep = GateReport.from_dict(gates)
        level = f"{rep.config.confidence:.0%}"
        print(f"\nGates: {'PASSED' if rep.passed else 'FAILED'}"
              + (f" (paired tests vs champion v{rep.champion_version} on the same test maps)"
                 if rep.champion_version else " (no champion to compare with)")
              + f"; values with their {level} interval, absolute gates judged on the "
              + ("point estimate" if rep.config.judge == "point" else "interval"))
        print(f"Why: {rep.reason}")
        for r in rep.results:
            print(f"  [{'pass' if r.passed else 'FAIL'}] {r.name:<22} {r.value_text():>34} {r.op} {r.threshold:g}"
                  + (f"   {r.detail}" if r.detail else ""))
    print("\n" + (info["model_card"] or "(no model card)"))
    return 0


@_need_model
def _history(args) -> int:
    from waferflow.tracking import audit_history

    rows = audit_history(store_uri(args), name=args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"'{args.name}' has no audit entries")
        return 0
    for e in rows:
        move = f"{e.get('alias') or '':<10} v{e.get('old_version') or '-'} -> v{e.get('new_version') or '-'}"
        status = e.get("status")
        if status == "intent":
            status = "intent (unconfirmed: interrupted before or during the alias move)"
        m = e.get("metrics") or {}
        ms = " ".join(f"{k}={v:.4g}" for k, v in m.items() if k in ("accuracy", "macro_f1", "p99_latency_ms"))
        print(f"{e.get('ts')}  {e.get('action'):<14} {move:<28} by {e.get('actor')}  [{status}]  {ms}")
        print(f"    reason: {e.get('reason')}")
    return 0


@_need_model
def _promote(args) -> int:
    from waferflow.tracking import promote

    res = promote(store_uri(args), args.version, reason=args.reason, actor=args.actor, name=args.name)
    if not res.promoted:
        print(f"v{res.version} is already champion; nothing changed")
        return 0
    print(f"champion: v{res.old_champion or '-'} -> v{res.new_champion} (recorded: {res.audit_key})")
    return 0


@_need_model
def _rollback(args) -> int:
    from waferflow.tracking import rollback

    res = rollback(store_uri(args), reason=args.reason, actor=args.actor, name=args.name)
    print(f"champion rolled back: v{res.old_champion} -> v{res.new_champion} (recorded: {res.audit_key})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from waferflow.cli import main

    sys.exit(main(["registry", *sys.argv[1:]]))
