"""Self-training on unlabeled maps: a trained teacher pseudo-labels them, a student trains on labels + pseudo-labels.

A new fab has a few hundred labeled maps and thousands of unlabeled ones. The teacher (any trained model dir)
predicts every unlabeled map with test-time augmentation over the symmetries it was trained with; maps whose averaged
confidence reaches ``threshold`` get the predicted class as a pseudo-label. Each class keeps at most
``max_per_class_ratio`` times its labeled count (its most confident maps), so the majority class cannot flood the
student. The student starts from the teacher's weights and trains with the normal loop on the union; validation
(early stopping, best checkpoint) stays on real labels only.

With ``synthetic_min_per_class`` set and a data taxonomy that has a synthetic counterpart (the source model's), each
student's training set is topped up with synthetic maps of the classes that have fewer maps than that (labeled +
pseudo-labeled), so a class with a handful of labels keeps what the source model learned of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from waferflow.data.contract import WaferDataset, concat_datasets
from waferflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)


#: what runs the teacher on the CPU (``SelfTrainConfig.cpu_engine``)
CPU_ENGINES = ("onnxruntime", "torch")
#: which model goes on after self-training (``SelfTrainConfig.keep``)
KEEP = ("validation", "student")


@dataclass(frozen=True)
class SelfTrainConfig:
    """Self-training settings of a pipeline run.

    Attributes:
        rounds: Teacher -> student rounds (0 = off: the selected candidate goes on unchanged).
        threshold: Minimum TTA-averaged confidence of a pseudo-label.
        max_per_class_ratio: Pseudo-labels per class at most this many times its labeled maps.
        tta: Pseudo-label with test-time augmentation over the data's symmetries.
        tta_rotations: With ``tta``, also average those views of each pool map turned by each angle (degrees), as
            the deployed TTA graph's ``export.tta_rotations`` do (off where the model's classes forbid rot90).
        synthetic_min_per_class: Top each student's training set up with synthetic maps of the data's taxonomy
            until every class has at least this many maps (0 = off; data without a synthetic taxonomy: off).
        synthetic_classes_below: Top up only the classes with fewer labeled training maps than this (0 = every
            class below ``synthetic_min_per_class``), so classes with enough real labels train on real maps only.
        synthetic_map_size: Size of those synthetic maps (as the source model's, ``source.map_size``).
        train: TrainConfig overrides of every student (strategy, steps, patience_steps, ...), on top of the run's.
        cpu_engine: What runs the teacher over the unlabeled maps on the CPU: ``onnxruntime`` (the teacher traced
            in memory, 2.45x faster than ``torch`` there with 8-view TTA; checked against PyTorch on its first batch) or
            ``torch``. A CUDA training pseudo-labels on its CUDA device in PyTorch.
        keep: Which model goes on: ``validation`` (the student only if its validation macro-F1 beats the teacher's
            best one) or ``student`` (the last student always; what validation would keep is still reported).
    """

    rounds: int = 0
    threshold: float = 0.9
    max_per_class_ratio: float = 3.0
    tta: bool = True
    tta_rotations: tuple[float, ...] = ()
    synthetic_min_per_class: int = 0
    synthetic_classes_below: int = 0
    synthetic_map_size: int = 64
    train: dict = field(default_factory=lambda: {"strategy": "full_finetune"})
    cpu_engine: str = "onnxruntime"
    keep: str = "validation"

    def __post_init__(self) -> None:
        if self.cpu_engine not in CPU_ENGINES:
            raise ConfigError(f"self_training.cpu_engine must be one of {CPU_ENGINES}, got {self.cpu_engine!r}")
        if self.keep not in KEEP:
            raise ConfigError(f"self_training.keep must be one of {KEEP}, got {self.keep!r}")
        if self.rounds < 0:
            raise ConfigError(f"self_training.rounds must be >= 0, got {self.rounds}")
        check_settings(self.threshold, self.max_per_class_ratio, max(1, self.rounds))
        object.__setattr__(self, "tta_rotations", _check_pseudo_rotations(self.tta_rotations, self.tta))
        if self.synthetic_min_per_class < 0:
            raise ConfigError(f"self_training.synthetic_min_per_class must be >= 0 (0 = off), got "
                              f"{self.synthetic_min_per_class}")
        if self.synthetic_classes_below < 0:
            raise ConfigError(f"self_training.synthetic_classes_below must be >= 0 (0 = every class), got "
                              f"{self.synthetic_classes_below}")
        if self.synthetic_map_size < 16:
            raise ConfigError(f"self_training.synthetic_map_size must be >= 16, got {self.synthetic_map_size}")


def _check_pseudo_rotations(rotations, tta: bool) -> tuple[float, ...]:
    """self_training.tta_rotations: a list of angles, and only with TTA on (whether the model's classes allow a
    turn is decided when it pseudo-labels)."""
    from waferflow.predictors.rotation import check_rotation_setting

    return check_rotation_setting("self_training.tta_rotations", rotations, tta,
                           "set self_training.tta=true (pseudo-labels use TTA only then)")


@dataclass(frozen=True)
class SyntheticTopUp:
    """Synthetic maps for the classes a student has too few maps of: each class reaches ``min_per_class``; with
    ``classes_below``, only the classes with fewer labeled maps than that."""

    taxonomy: str
    min_per_class: int
    map_size: int = 64
    seed: int = 0
    classes_below: int = 0

    def __call__(self, ds: WaferDataset, round_index: int = 0,
                 labeled_counts: np.ndarray | None = None) -> tuple[WaferDataset, list[int]]:
        """``ds`` joined with the synthetic maps it needs, and how many each class got. ``labeled_counts`` (the
        real labeled maps per class; default: ``ds``'s counts) decide which classes ``classes_below`` admits."""
        counts = np.bincount(ds.labels, minlength=len(ds.class_names))
        need = np.maximum(0, self.min_per_class - counts)
        if self.classes_below:
            need[(counts if labeled_counts is None else np.asarray(labeled_counts)) >= self.classes_below] = 0
        if not need.any():
            return ds, need.tolist()
        # a stream apart from the source model's maps (generated from source.seed), and new maps each round
        syn = synthetic_maps(self.taxonomy, need, self.map_size, self.seed + 1234 + round_index)
        syn = replace(syn, class_names=tuple(ds.class_names), meta=dict(ds.meta))
        return concat_datasets([ds, syn]), need.tolist()


def student_overrides(run_train, student_train) -> dict:
    """Every student's TrainConfig overrides: the run's train settings without their budget
    (``train.config.BUDGET_KEYS``: students have their own), then ``self_training.train``'s."""
    from waferflow.train.config import BUDGET_KEYS

    return {**{k: v for k, v in dict(run_train).items() if k not in BUDGET_KEYS}, **dict(student_train or {})}


def synthetic_maps(taxonomy: str, per_class, size: int, seed: int) -> WaferDataset:
    """Exactly ``per_class[c]`` synthetic maps of each class ``c`` of ``taxonomy`` (its generator, drawn in
    proportion to the counts asked for, then the first maps of each class kept), labeled, in class order.

    Raises:
        ConfigError: unknown taxonomy, or counts that do not match its classes.
    """
    from waferflow.data.contract import concat_datasets
    from waferflow.data.synth import default_config, generate, get_taxonomy

    need = np.asarray(per_class, dtype=np.int64)
    tax = get_taxonomy(taxonomy)
    if need.shape != (tax.num_classes,) or (need < 0).any():
        raise ConfigError(f"per_class must be {tax.num_classes} counts >= 0 for taxonomy {taxonomy!r}, got "
                          f"{need.tolist()}")
    # every class keeps a tiny share, so the generator's draws stay valid when a count is 0
    freqs = tuple(float(n) / need.sum() + 1e-6 for n in need)
    cfg = replace(default_config(taxonomy), class_freqs=freqs)
    syn = generate(int(need.sum() * 1.6) + 50, size=size, seed=seed, taxonomy=taxonomy, config=cfg)
    while True:
        picks = [np.flatnonzero(syn.labels == c)[:k] for c, k in enumerate(need)]
        if all(len(p) == k for p, k in zip(picks, need)):
            return replace(syn.subset(np.sort(np.concatenate(picks))), lots=None)
        # a rare shortfall: the same stream, drawn further (generate(2n) == generate(n) + generate(n, start=n))
        more = generate(len(syn), size=size, seed=seed, taxonomy=taxonomy, config=cfg, start=len(syn))
        syn = concat_datasets([syn, more])


def pseudo_label(teacher_dir: str | Path, unlabeled: WaferDataset, labeled: WaferDataset, threshold: float = 0.9,
                 max_per_class_ratio: float = 3.0, tta: bool = True, batch_size: int = 256,
                 engine: str = "onnxruntime", device: str = "cpu",
                 rotations: tuple = ()) -> tuple[WaferDataset, dict]:
    """Pseudo-label ``unlabeled`` with the teacher model dir, run by ``engine`` on the CPU (see
    ``SelfTrainConfig.cpu_engine``) or in PyTorch on a CUDA ``device``. With ``tta``, ``rotations`` (degrees) add
    the views of each map turned by each angle, unless the model's classes forbid rot90 (the report says so).

    Returns:
        ``(pseudo, report)``: the selected maps with their pseudo-labels (labels of ``unlabeled``, if any, are
        never used), and a report with per-class kept counts, the threshold and the views used. When
        ``unlabeled`` carries hidden labels (a benchmark), the report adds the pseudo-labels' accuracy.

    Raises:
        ConfigError: threshold outside (0, 1], a non-positive cap, or bad ``rotations`` (or rotations without
        ``tta``). DataError: no unlabeled maps, or the teacher's classes differ from the labeled data's.
    """
    from waferflow.evaluation import check_classes
    from waferflow.predictors import predict_dataset, softmax
    from waferflow.models import load_model_dir

    check_settings(threshold, max_per_class_ratio)
    _check_pseudo_rotations(rotations, tta)
    if len(unlabeled) == 0:
        raise DataError("self-training needs unlabeled maps; the unlabeled dataset is empty")
    model, spec = load_model_dir(teacher_dir)
    check_classes(labeled, spec)
    predict, engine = _teacher_predictor(model, spec, engine, device)
    off = {}
    if tta:
        predict, off = _tta(predict, spec, labeled.meta.get("taxonomy"), rotations)
    # only the maps are read: labels and class names of the unlabeled file play no part
    prob = softmax(predict_dataset(predict, unlabeled, spec, batch_size, desc="pseudo-label"))
    conf, pred = prob.max(1), prob.argmax(1)
    labeled_counts = np.bincount(labeled.labels, minlength=len(spec.class_names))
    idx, counts = select_confident(prob, labeled_counts, threshold, max_per_class_ratio)
    per_class = dict(zip(spec.class_names, counts))
    pseudo = replace(unlabeled.subset(idx), labels=pred[idx].astype(np.int64), class_names=tuple(spec.class_names),
                     lots=None, meta=dict(labeled.meta))
    report = {"unlabeled_maps": int(len(unlabeled)), "kept": int(len(idx)), "threshold": threshold,
              "max_per_class_ratio": max_per_class_ratio, "tta_views": len(getattr(predict, "views", [None])),
              "engine": engine, "per_class": per_class,
              "mean_confidence_kept": float(conf[idx].mean()) if len(idx) else None, **off}
    if unlabeled.labeled and tuple(unlabeled.class_names) == tuple(spec.class_names) and len(idx):
        report["pseudo_label_accuracy"] = float((pred[idx] == unlabeled.labels[idx]).mean())
    return pseudo, report


def _tta(predict, spec, taxonomy, rotations):
    """``(TTA predictor, {} or {"rotations_off": why})``: the model's symmetries, and ``rotations`` where rot90 is
    among them (as the deployed TTA graph: a turn could change a label otherwise)."""
    from waferflow.predictors import tta_predictor
    from waferflow.predictors.rotation import effective_rotations
    from waferflow.predictors.runtime import rotation_pad
    from waferflow.train.augment import model_symmetries

    symmetries = model_symmetries(spec, taxonomy)
    rotations, off = effective_rotations("self_training.tta_rotations", rotations, symmetries)
    return tta_predictor(predict, symmetries, rotations, rotation_pad(spec) if rotations else None), off


def _teacher_predictor(model, spec, engine: str, device: str):
    """``(predictor, what runs it)``: PyTorch on a CUDA device; on the CPU, ``engine``."""
    from waferflow.predictors import onnxruntime_model_predictor, torch_predictor

    if engine not in CPU_ENGINES:
        raise ConfigError(f"the pseudo-labelling engine must be one of {CPU_ENGINES}, got {engine!r}")
    if str(device).startswith("cuda"):
        return torch_predictor(model, device), f"torch ({device})"
    if engine == "onnxruntime":  # as many threads as PyTorch was given (train.num_threads), not all the cores
        import torch

        return onnxruntime_model_predictor(model, spec, threads=torch.get_num_threads()), "onnxruntime (cpu)"
    return torch_predictor(model), "torch (cpu)"


def select_confident(prob: np.ndarray, labeled_counts: np.ndarray, threshold: float,
                     max_per_class_ratio: float) -> tuple[np.ndarray, list[dict]]:
    """The pseudo-labelling rule: per predicted class, the maps whose probability reaches ``threshold``, at most
    ``max_per_class_ratio`` times the class's labeled maps (the most confident first).

    Returns:
        ``(sorted indices into prob, per class {"confident", "kept", "cap"})``.
    """
    conf, pred = prob.max(1), prob.argmax(1)
    keep: list[np.ndarray] = []
    per_class = []
    for c in range(prob.shape[1]):
        cand = np.flatnonzero((pred == c) & (conf >= threshold))
        # a class without labeled maps gets no pseudo-labels: the teacher never saw one
        cap = int(np.ceil(max_per_class_ratio * labeled_counts[c]))
        chosen = cand[np.argsort(-conf[cand], kind="stable")[:cap]]
        keep.append(chosen)
        per_class.append({"confident": int(len(cand)), "kept": int(len(chosen)), "cap": cap})
    return np.sort(np.concatenate(keep)), per_class


def check_settings(threshold: float, max_per_class_ratio: float, rounds: int = 1) -> None:
    """Raise ConfigError for settings self-training cannot use (callers check before any training starts)."""
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"self-training threshold must be in (0, 1], got {threshold}")
    if max_per_class_ratio <= 0:
        raise ConfigError(f"max_per_class_ratio must be > 0, got {max_per_class_ratio}")
    if rounds < 1:
        raise ConfigError(f"self-training rounds must be >= 1, got {rounds}")


def self_train(cfg, teacher_dir: str | Path, train_ds: WaferDataset, val_ds: WaferDataset, unlabeled: WaferDataset,
               out_dir: str | Path, rounds: int = 1, threshold: float = 0.9, max_per_class_ratio: float = 3.0,
               tta: bool = True, top_up: SyntheticTopUp | None = None, engine: str = "onnxruntime",
               rotations: tuple = ()):
    """``rounds`` of pseudo-label -> train a student from the previous model's weights.

    The teacher runs in ``engine`` on the CPU (:func:`pseudo_label`), in PyTorch when ``cfg.device`` is CUDA.
    ``rotations``: the extra TTA angles of :func:`pseudo_label`.
    ``top_up`` (optional) adds synthetic maps to each student's training set after pseudo-labelling (the caps count
    labeled maps only); validation stays real.

    The student of the last round is written to ``out_dir`` (earlier rounds to ``out_dir/rounds/r{i}``), with
    ``self_training.json`` (every round's pseudo-label report and the student's best validation metrics).

    Returns:
        The last round's :class:`TrainResult`, its ``extra["self_training"]`` holding the rounds' reports.
    """
    from waferflow.config import atomic_write_json
    from waferflow.train.loop import resolve_device, train

    check_settings(threshold, max_per_class_ratio, rounds)
    _check_pseudo_rotations(rotations, tta)
    if cfg.strategy in ("scratch", "feature_extraction"):
        raise ConfigError(f"self-training fine-tunes the teacher's weights; strategy {cfg.strategy!r} cannot. "
                          "Use full_finetune or gradual_unfreezing")
    out, device = Path(out_dir), resolve_device(cfg.device)
    teacher, reports, result = Path(teacher_dir), [], None
    for r in range(rounds):
        t0 = time.perf_counter()
        pseudo, rep = pseudo_label(teacher, unlabeled, train_ds, threshold, max_per_class_ratio, tta,
                                   cfg.eval_batch_size, engine, device, rotations)
        if rep["kept"] == 0:
            raise DataError(f"no unlabeled map reached confidence {threshold}; lower the threshold or train a "
                            "stronger teacher")
        joined = concat_datasets([train_ds, pseudo])
        if top_up is not None:
            joined, added = top_up(joined, r, np.bincount(train_ds.labels, minlength=len(train_ds.class_names)))
            rep["synthetic_per_class"] = dict(zip(train_ds.class_names, added))
        student = out if r == rounds - 1 else out / "rounds" / f"r{r + 1}"
        log.info("self-training round %d: %d labeled + %d pseudo-labeled + %d synthetic maps", r + 1, len(train_ds),
                 rep["kept"], len(joined) - len(train_ds) - rep["kept"])
        # with cfg.unlabeled_weight, the student also learns from the whole pool's consistency (its pixels only)
        result = train(cfg, joined, val_ds, student, weights=str(teacher),
                       unlabeled=unlabeled if cfg.unlabeled_weight else None)
        rep.update(round=r + 1, student=str(student), student_best_val=result.best_val,
                   seconds=time.perf_counter() - t0)
        reports.append(rep)
        teacher = student
    atomic_write_json(out / "self_training.json", {"teacher": str(teacher_dir), "rounds": reports})
    result.extra["self_training"] = reports
    return result
