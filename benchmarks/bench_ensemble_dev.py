"""Would two models, or a prior correction, beat the champion? Post-hoc options on a finished development run.

Reads the workdir of ``python -m benchmarks.bench_real_pipeline --dev N --workdir DIR``: its candidates, the model
that went on after self-training ("final": the registered model; for a run whose source-interpolation stage made the
source ensemble, that ensemble, so "final+source" then weighs the source twice), its validation split, the dev maps
it never saw and its pool (whose hidden labels no stage read). Every model is scored with test-time augmentation over
its symmetries (the deployed ``onnx_fp32_tta``, computed in torch), and compared with the final model alone (the
baseline):

- **ensembles**: the mean probability of the final model and the runner-up candidate on validation (``rule``: a
  pairing a pipeline can make without the dev maps), and of every other pair and triple, for context; the models
  include the synthetic source model (``source``: trained on synthetic maps only, never on a real label) when the
  run had one, so its zero-shot score and its pairing with the final model show what the real labels add;
  when the final model is the source ensemble, its first member ("corrected": the model after the prior
  correction) is scored too, so ``rule_third_member`` names the ensemble that adds the runner-up as a third member;
- **logit adjustment**: ``logits - tau * log(train prior)``, tau chosen on the validation split (the only place a
  pipeline could choose it), then scored on the dev maps;
- **pseudo-labels**: how many pool maps the profile's threshold and per-class cap keep, and how many are right, with
  the selected teacher alone, and with the teacher averaged with the runner-up or with the source model (per class
  too; ``--no-pool`` skips these passes).

Nothing here reads ``wm811k_val_data.npz``::

    python -m benchmarks.bench_real_pipeline --dev 2000 --workdir /tmp/devB --out devB.json
    python -m benchmarks.bench_ensemble_dev --workdir /tmp/devB --out ens_dev.json

A run scored on maps of its own (``--score``) names them with ``--dev``, and its pool with ``--pool``.

Prints JSON (accuracy and macro-F1 of each option on val and dev, and each option minus the final model on dev).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path

import numpy as np

TAUS = [round(float(t), 1) + 0.0 for t in np.arange(-1.0, 1.01, 0.1)]  # + 0.0: no "-0.0"


def _scores(y: np.ndarray, scores: np.ndarray) -> dict:
    """Accuracy and macro-F1 of argmax(scores) as ``waferflow evaluate`` computes them (macro over the classes
    present)."""
    from waferflow.evaluation import metrics_from_logits

    m = metrics_from_logits(y, scores, [str(i) for i in range(scores.shape[1])])["overall"]
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


def _tta_probs(model_dir: Path, datasets: dict) -> dict:
    from waferflow.models import load_model_dir
    from waferflow.predictors import predict_dataset, softmax, torch_predictor, tta_predictor
    from waferflow.train.augment import model_symmetries

    model, spec = load_model_dir(model_dir)
    predict = tta_predictor(torch_predictor(model), model_symmetries(spec))
    return {k: softmax(predict_dataset(predict, ds, spec, 256, desc=f"{model_dir.parent.parent.name}:{k}"))
            for k, ds in datasets.items()}


def run_outputs(run: Path) -> Path:
    """The kfp output folder of the latest training run under ``run`` (a benchmark workdir's ``run/``).

    Raises:
        SystemExit: no finished run there.
    """
    found = sorted((run / "kfp_outputs").glob("waferflow-training-*"))
    if not found:
        raise SystemExit(f"{run} holds no pipeline run (kfp_outputs/waferflow-training-*): give the --workdir of a "
                         "finished `python -m benchmarks.bench_real_pipeline --dev N` run")
    return found[-1]


def deployed_model(outs: Path) -> Path:
    """The model a run sent on to export: the source-interpolation stage's output (runs before it: the prior
    correction's, and before that self-training's)."""
    averaged = outs / "interpolate-source" / "model"
    return averaged if averaged.is_dir() else corrected_model(outs)


def shared_dev(workdirs: list[Path]):
    """The dev maps that every finished ``bench_real_pipeline --dev`` workdir was scored on (``dev.npz``, read once
    each).

    Raises:
        SystemExit: the workdirs were scored on different dev maps.
    """
    from waferflow.data.contract import dataset_hash, load_dataset

    sets = [load_dataset(w / "dev.npz", require_labels=True) for w in workdirs]
    if len({dataset_hash(d) for d in sets}) != 1:
        raise SystemExit(f"the runs were scored on different dev maps ({', '.join(str(w / 'dev.npz') for w in workdirs)})"
                         "; give runs of one --draw-labels / --dev draw")
    return sets[0]


def deployed_probs(workdir: Path, ds, angles: list[float]) -> tuple[Path, np.ndarray]:
    """``(model, float64 [N, K])``: the deployed model of a finished workdir and its mean probability over the
    deployed TTA (the 8 dihedral views of each map turned by each of ``angles``), computed in torch.

    Kept in ``workdir/dev_probs.npz`` with what they were computed from (the model's weights, the maps, the
    angles), so a later comparison with the same run reads them instead of scoring again.
    """
    from benchmarks.bench_rot_tta_dev import angle_probs
    from waferflow.data.contract import dataset_hash
    from waferflow.export.onnx_export import sha256_file

    model = deployed_model(run_outputs(workdir / "run"))
    key = json.dumps({"weights": sha256_file(model / "weights.pt"), "dev": dataset_hash(ds), "angles": list(angles)})
    cache = workdir / "dev_probs.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as old:
            if str(old["key"]) == key:
                return model, old["probs"]
    probs = np.mean(list(angle_probs(model, ds, angles).values()), axis=0)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, probs=probs, key=np.array(key))
    tmp.replace(cache)
    return model, probs


def corrected_model(outs: Path) -> Path:
    """The model after the prior correction, before any source interpolation (runs before it: self-training's)."""
    corrected = outs / "correct-prior" / "model"
    return corrected if corrected.is_dir() else outs / "self-train-model" / "model"


def _models(run: Path) -> tuple[dict[str, Path], list[str], Path]:
    """{name: model dir} of the candidates, the model that went on ("final") and the synthetic source model
    ("source", when the run had one), the candidates ranked on validation, and the run's kfp output folder."""
    outs = run_outputs(run)
    models = {}
    for it in sorted(outs.glob("for-loop-*-iteration-*")):
        name = json.loads((it / "evaluate-model" / "metrics_json" / "metrics.json").read_text())["candidate"]
        models[name] = it / "train-candidate" / "model"
    ranked = json.loads((outs / "select-best" / "candidates" / "candidates.json").read_text())["ranked"]
    models["final"] = deployed_model(outs)
    source = _source_model(run, outs)
    if source is not None:
        models["source"] = source
    if models["final"] != corrected_model(outs):  # the final model is the source ensemble: its first member too
        models["corrected"] = corrected_model(outs)
    return models, ranked, outs


def _source_model(run: Path, outs: Path) -> Path | None:
    """The source model the run's candidates started from (synthetic maps only, no real label), downloaded from the
    run's registry into the benchmark's workdir (``RUN/../source_download``, replaced each time); None when the run
    had no source stage or no taxonomy matched."""
    from waferflow.models.weights import download_model_dir
    from waferflow.orchestration.local import embedded_tracking_uri

    reports = sorted((outs / "source-model" / "report").glob("*.json"))
    uris = list(json.loads(reports[0].read_text()).get("sources", {}).values()) if reports else []
    if not uris:
        return None
    dst = run.parent / "source_download"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    return download_model_dir(uris[0], embedded_tracking_uri(run), dst)


def _pseudo_labels(prob: np.ndarray, truth: np.ndarray, train_counts: np.ndarray, threshold: float,
                   ratio: float) -> dict:
    """Kept and wrong pseudo-labels under self-training's own rule."""
    from waferflow.train.selftrain import select_confident

    idx, _ = select_confident(prob, train_counts, threshold, ratio)
    pred = prob[idx].argmax(1)
    right = np.bincount(pred[pred == truth[idx]], minlength=prob.shape[1])
    return {"kept": int(len(idx)), "wrong": int((pred != truth[idx]).sum()),
            "kept_per_class": np.bincount(pred, minlength=prob.shape[1]).tolist(), "right_per_class": right.tolist()}


def main(argv: list[str] | None = None) -> int:
    from waferflow.data.contract import load_dataset

    from benchmarks._report import emit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a finished `bench_real_pipeline --dev` workdir")
    ap.add_argument("--dev", type=Path, default=None, help="dev maps (default: WORKDIR/dev.npz, from --dev N)")
    ap.add_argument("--pool", type=Path, default=None, help="the run's pool with its hidden labels (default: "
                    "WORKDIR/pool.npz)")
    ap.add_argument("--no-pool", action="store_true", help="skip the pseudo-label counts on the pool (its passes "
                    "are the slowest)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    models, ranked, outs = _models(a.workdir / "run")
    data = {"val": load_dataset(outs / "split-data" / "val" / "data.npz", require_labels=True),
            "dev": load_dataset(a.dev or a.workdir / "dev.npz", require_labels=True)}
    if not a.no_pool:
        data["pool"] = load_dataset(a.pool or a.workdir / "pool.npz", require_labels=True)
    train = load_dataset(outs / "split-data" / "train" / "data.npz", require_labels=True)
    if len(ranked) < 2:
        raise SystemExit(f"the run trained {len(ranked)} candidate(s); an ensemble needs a runner-up")
    scored = {k: v for k, v in data.items() if k != "pool"}
    pooled = ranked[:2] + ["source"]  # the pool only for the models whose pseudo-labels are counted below
    probs = {name: _tta_probs(d, data if name in pooled else scored) for name, d in models.items()}
    short = {name: name.split("-")[0] for name in models}  # "final" and "source" stay as they are
    res: dict = {"workdir": str(a.workdir), "ranked_on_val": ranked, "options": {}}
    for k in (1, 2, 3):
        for combo in itertools.combinations(models, k):
            res["options"]["+".join(short[n] for n in combo)] = {
                split: _scores(data[split].labels, sum(probs[n][split] for n in combo)) for split in ("val", "dev")}
    res["rule"] = short[ranked[1]] + "+final"  # the key of that pair above
    if "corrected" in models:  # final = corrected+source; the third member a pipeline could add: the runner-up
        res["rule_third_member"] = "+".join(short[n] for n in models if n in (ranked[1], "source", "corrected"))
    prior = np.log(np.bincount(train.labels, minlength=len(train.class_names)) / len(train) + 1e-9)
    adj = {t: {s: _scores(data[s].labels, np.log(probs["final"][s] + 1e-12) - t * prior)
               for s in ("val", "dev")}
           for t in TAUS}
    tau = max(TAUS, key=lambda t: (adj[t]["val"]["macro_f1"], -abs(t)))
    res["options"][f"final, logit adjustment tau={tau}"] = adj[tau]
    res["logit_adjustment_dev_macro_f1"] = {str(t): adj[t]["dev"]["macro_f1"] for t in TAUS}  # context only
    base = res["options"]["final"]["dev"]
    res["minus_final_on_dev"] = {k: {m: round(v["dev"][m] - base[m], 4) for m in base}
                                 for k, v in res["options"].items() if k != "final"}
    if not a.no_pool:
        res["pseudo_labels"] = _pool_counts(probs, ranked, data["pool"], train)
    emit(res, a.out)
    return 0


def _pool_counts(probs: dict, ranked: list[str], pool, train) -> dict:
    """Pseudo-labels the real profile's self-training rule keeps on the pool, from the teacher (the selected
    candidate) alone, averaged with the runner-up, and averaged with the source model (when the run had one)."""
    from waferflow.config import load_config
    from waferflow.profiles import get_profile
    from waferflow.train.selftrain import SelfTrainConfig

    st = load_config(SelfTrainConfig, overrides=dict(get_profile("real").self_training))
    counts = np.bincount(train.labels, minlength=len(train.class_names))
    res = {"teacher_model": ranked[0], "runner_up_model": ranked[1], "threshold": st.threshold,
           "max_per_class_ratio": st.max_per_class_ratio, "pool": len(pool), "class_names": list(train.class_names)}
    teacher = probs[ranked[0]]["pool"]
    options = {"teacher": teacher, "teacher+runner_up": (teacher + probs[ranked[1]]["pool"]) / 2}
    if "source" in probs:
        options["teacher+source"] = (teacher + probs["source"]["pool"]) / 2
    for name, p in options.items():
        res[name] = _pseudo_labels(p, pool.labels, counts, st.threshold, st.max_per_class_ratio)
    return res


if __name__ == "__main__":
    raise SystemExit(main())
