"""Judge a batch of new maps against the champion's reference: evidently report + decision.

Three signals, each with its own threshold (``DriftConfig``):

* **readable features**: evidently ``ValueDrift`` per feature with the normed Wasserstein distance (distance / the
  reference std). A feature drifts when its distance >= ``feature_threshold``; the batch drifts when the share of
  drifted features >= ``share_threshold``. Wasserstein rather than evidently's default KS test: at 1,000 rows the KS
  p-value flags tiny, harmless differences (the false-alarm target is <= 1 in 20 clean batches); a distance
  measured in reference standard deviations does not grow with the sample size.
* **embedding drift**: a domain classifier (gradient-boosted trees, 3-fold out-of-fold) tries to tell reference rows
  from current rows using the champion's view (PCA components of its embedding, confidence, entropy). Its ROC AUC is
  the score: 0.5 = indistinguishable. It is computed here (evidently's ``EmbeddingsDrift`` runs a t-SNE for its plot,
  about a minute per batch on 2 cores) and shown in the evidently report as its own column, ``domain_score`` (each
  row's out-of-fold probability of being "current"), next to ``ValueDrift`` on every PCA component.
* **prediction mix**: evidently ``ValueDrift`` on the predicted class with the Jensen-Shannon distance.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from waferflow.config import atomic_write_json, atomic_write_text
from waferflow.data.contract import WaferDataset
from waferflow.drift.features import READABLE_FEATURES, check_batch, map_features
from waferflow.drift.model_view import MODEL_VIEW_NUMERIC, PRED_COLUMN, model_view
from waferflow.drift.config import DriftConfig
from waferflow.drift.reference import Reference
from waferflow.errors import ConfigError

DOMAIN_COLUMN = "domain_score"


def domain_classifier_auc(ref: np.ndarray, cur: np.ndarray, seed: int = 0,
                          folds: int = 3) -> tuple[float, np.ndarray]:
    """Out-of-fold ROC AUC of a classifier telling ``cur`` rows from ``ref`` rows.

    Returns:
        (AUC, out-of-fold probability of "current" for every row of ``vstack([ref, cur])``).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    x = np.vstack([ref, cur]).astype(np.float64)
    y = np.r_[np.zeros(len(ref)), np.ones(len(cur))]
    folds = int(min(folds, len(cur), len(ref)))
    if folds < 2:
        return 0.5, np.full(len(y), len(cur) / len(y))
    from threadpoolctl import threadpool_limits

    oof = np.zeros(len(y))
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in skf.split(x, y):
        clf = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=15, learning_rate=0.1,
                                             early_stopping=False, random_state=seed)
        # One OpenMP thread: the data are small and a busy machine makes OpenMP spin-waits very slow.
        with threadpool_limits(limits=1, user_api="openmp"):
            clf.fit(x[tr], y[tr])
            oof[te] = clf.predict_proba(x[te])[:, 1]
    return float(roc_auc_score(y, oof)), oof


def current_frame(model: Any, spec: Any, ds: WaferDataset, ref: Reference) -> pd.DataFrame:
    """Readable features + the champion's view of a batch, projected on the reference PCA."""
    check_batch(ds)
    view, _ = model_view(model, spec, ds, pca=ref.pca)
    return pd.concat([map_features(ds), view], axis=1)


def _evidently_report(ref_df: pd.DataFrame, cur_df: pd.DataFrame, pc_cols: list[str], cfg: DriftConfig):
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    numeric = list(READABLE_FEATURES) + pc_cols + list(MODEL_VIEW_NUMERIC) + [DOMAIN_COLUMN]
    dd = DataDefinition(numerical_columns=numeric, categorical_columns=[PRED_COLUMN])
    # The preset renders one table of every readable feature (name, type, distributions, score, verdict)
    # on top of the report, then a ValueDrift per feature; the JSON holds DriftedColumnsCount + ValueDrift.
    metrics: list = [
        DataDriftPreset(columns=list(READABLE_FEATURES), method="wasserstein", threshold=cfg.feature_threshold,
                        drift_share=cfg.share_threshold),
    ]
    metrics += [ValueDrift(column=PRED_COLUMN, method="jensenshannon", threshold=cfg.prediction_threshold)]
    # The champion's view: the domain score (the embedding-drift signal itself), PCA components, confidence and
    # entropy, as a second table (its "share" is informational; the decision uses the domain-classifier AUC).
    metrics += [DataDriftPreset(columns=[DOMAIN_COLUMN] + pc_cols + list(MODEL_VIEW_NUMERIC), method="wasserstein",
                                threshold=cfg.feature_threshold, drift_share=cfg.share_threshold)]
    report = Report(metrics)
    with warnings.catch_warnings():
        # evidently correlates every column pair; constant columns (e.g. one die grid) divide by a zero std.
        warnings.filterwarnings("ignore", message="invalid value encountered in divide", category=RuntimeWarning)
        snap = report.run(Dataset.from_pandas(cur_df, data_definition=dd),
                          Dataset.from_pandas(ref_df, data_definition=dd))
    return snap


def _value_drift_scores(snap_dict: dict) -> dict[str, float]:
    out = {}
    for m in snap_dict["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type") == "evidently:metric_v2:ValueDrift":
            out[cfg["column"]] = float(m["value"])
    return out


def judge_drift(model: Any, spec: Any, reference: Reference, current: WaferDataset,
                out_dir: str | os.PathLike, cfg: DriftConfig | None = None,
                current_source: str | None = None, current_df: pd.DataFrame | None = None,
                unlabeled_index: np.ndarray | None = None) -> dict[str, Any]:
    """Judge ``current`` against ``reference``; write report.html, report.json, decision.json (and to_label.csv).

    Args:
        model: The champion (the reference must be the one built for it).
        spec: Its ModelSpec.
        reference: The champion's reference (``load_reference``).
        current: The new maps (labeled or not).
        out_dir: Output folder; ``decision.json`` is written last, so its presence means the check completed.
        cfg: Thresholds.
        current_source: Where the batch came from (recorded in the decision).
        current_df: ``current_frame(model, spec, current, reference)`` when the caller already has it.
        unlabeled_index: Which maps of ``current`` carry no label (default: all of them when ``current`` is
            unlabeled, none when it is labeled); they are listed "to label".

    Returns:
        The decision dict (also in ``decision.json``).

    Raises:
        DataError: an empty batch or an unknown die coding (nothing is written then).
    """
    cfg = cfg or DriftConfig()
    t0 = time.perf_counter()
    check_batch(current)
    ref_classes = list(reference.summary.get("class_names", []))
    if ref_classes and ref_classes != list(spec.class_names):
        raise ConfigError(
            f"the reference was built for classes {ref_classes} but the model predicts {list(spec.class_names)}; "
            "use the reference stored with this model version (or rebuild it)"
        )
    cur_df = (current_frame(model, spec, current, reference) if current_df is None else current_df).copy()
    if len(cur_df) != len(current):
        raise ValueError("current_df must have one row per map of current")
    ref_df = reference.frame.copy()
    pc_cols = [c for c in ref_df.columns if c.startswith("emb_pc")]
    view_cols = pc_cols + list(MODEL_VIEW_NUMERIC)
    auc, oof = domain_classifier_auc(ref_df[view_cols].to_numpy(), cur_df[view_cols].to_numpy(), seed=cfg.seed)
    ref_df[DOMAIN_COLUMN] = oof[: len(ref_df)]
    cur_df[DOMAIN_COLUMN] = oof[len(ref_df):]
    cols = list(READABLE_FEATURES) + view_cols + [PRED_COLUMN, DOMAIN_COLUMN]
    snap = _evidently_report(ref_df[cols], cur_df[cols], pc_cols, cfg)
    snap_dict = snap.dict()
    scores = _value_drift_scores(snap_dict)

    drifted, share, pred_js, reasons = _drift_reasons(scores, auc, ref_df, cur_df, cfg)

    if unlabeled_index is None:
        unlabeled_index = np.arange(0 if current.labeled else len(current))
    unlabeled_index = np.asarray(unlabeled_index, dtype=np.int64)
    to_label = int(len(unlabeled_index))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decision.json").unlink(missing_ok=True)  # a stale decision must not outlive a failed check
    atomic_write_text(out / "report.html", snap.get_html_str(as_iframe=False))
    atomic_write_text(out / "report.json", snap.json())
    if to_label:
        _write_to_label(out / "to_label.csv", cur_df, unlabeled_index)
    decision = {
        "drift_detected": bool(reasons),
        "reasons": reasons,
        "drifted_features": drifted,
        "share": share,
        "embedding_score": auc,
        "prediction_js": pred_js,
        "feature_scores": {c: scores[c] for c in READABLE_FEATURES},
        "n_current": int(len(current)),
        "n_reference": int(len(ref_df)),
        "labeled": bool(to_label == 0),
        "to_label": to_label,
        "to_label_file": str(out / "to_label.csv") if to_label else None,
        "thresholds": {"share": cfg.share_threshold, "feature": cfg.feature_threshold,
                       "embedding": cfg.embedding_threshold, "prediction": cfg.prediction_threshold},
        "methods": {"feature": "wasserstein (normed, evidently ValueDrift)",
                    "embedding": "domain classifier ROC AUC (HistGradientBoosting, 3-fold OOF)",
                    "prediction": "jensenshannon (evidently ValueDrift)"},
        "reference": str(reference.path),
        "reference_model": reference.summary.get("model"),
        "current": current_source,
        "report_html": str(out / "report.html"),
        "report_json": str(out / "report.json"),
        "seconds": round(time.perf_counter() - t0, 3),
        "retrain": None,
    }
    atomic_write_json(out / "decision.json", decision)
    return decision


def _drift_reasons(scores: dict[str, float], auc: float, ref_df: pd.DataFrame, cur_df: pd.DataFrame,
                   cfg: DriftConfig) -> tuple[list[str], float, float, list[str]]:
    """``(drifted features, their share, prediction JS, reasons)``: one reason per test that fired."""
    drifted = [c for c in READABLE_FEATURES if scores[c] >= cfg.feature_threshold]
    share = len(drifted) / len(READABLE_FEATURES)
    pred_js = scores[PRED_COLUMN]
    reasons = []
    if share >= cfg.share_threshold:
        reasons.append(f"{len(drifted)} of {len(READABLE_FEATURES)} readable features drifted "
                       f"(share {share:.2f} >= {cfg.share_threshold}): {', '.join(drifted)}")
    if auc >= cfg.embedding_threshold:
        reasons.append(f"the champion's embeddings drifted: a domain classifier tells new maps from the reference "
                       f"with ROC AUC {auc:.3f} >= {cfg.embedding_threshold}")
    if pred_js >= cfg.prediction_threshold:
        ref_mix = ref_df[PRED_COLUMN].value_counts(normalize=True)
        cur_mix = cur_df[PRED_COLUMN].value_counts(normalize=True)
        delta = cur_mix.reindex(ref_mix.index.union(cur_mix.index), fill_value=0) - \
            ref_mix.reindex(ref_mix.index.union(cur_mix.index), fill_value=0)
        top = delta.abs().sort_values(ascending=False).index[:3]
        moves = ", ".join(f"{k} {ref_mix.get(k, 0):.0%}->{cur_mix.get(k, 0):.0%}" for k in top)
        reasons.append(f"the predicted-class mix shifted (Jensen-Shannon {pred_js:.3f} >= "
                       f"{cfg.prediction_threshold}): {moves}")
    return drifted, share, pred_js, reasons


def _write_to_label(path: Path, cur_df: pd.DataFrame, unlabeled_index: np.ndarray) -> None:
    """The unlabeled maps, least confident first, as a CSV to hand to whoever labels them."""
    conf = cur_df["confidence"].to_numpy()[unlabeled_index]
    order = unlabeled_index[np.argsort(conf, kind="stable")]
    tl = pd.DataFrame({"index": order, "pred_class": cur_df[PRED_COLUMN].to_numpy()[order],
                       "confidence": cur_df["confidence"].to_numpy()[order]})
    atomic_write_text(path, tl.to_csv(index=False))
