"""The self-training stage's work: teacher -> pseudo-labels (TTA, per-class caps) -> student, kept if it wins on
validation (or always, ``self_training.keep=student``). No kfp import here."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from waferflow.config import atomic_write_json, load_config
from waferflow.train.selftrain import SelfTrainConfig, student_overrides


def _student_config(settings: SelfTrainConfig, train_config: Mapping[str, Any], teacher_dir: Path, seed: int,
                    device: str):
    from waferflow.models.spec import read_spec
    from waferflow.train.config import TrainConfig

    spec = read_spec(teacher_dir)
    overrides = {**student_overrides(train_config, settings.train), "backbone": spec.backbone,
                 "input_size": spec.input_size, "seed": seed, "device": device}
    return load_config(TrainConfig, overrides=overrides)


def _top_up(cfg: SelfTrainConfig, class_names, seed: int):
    """The students' synthetic top-up and a line that says whether it is on (and why not)."""
    from waferflow.train.selftrain import SyntheticTopUp
    from waferflow.train.source import matching_taxonomy

    if cfg.synthetic_min_per_class == 0:
        return None, "off: self_training.synthetic_min_per_class is 0"
    tax = matching_taxonomy(class_names)
    if tax is None:
        return None, f"off: no synthetic taxonomy has the data's classes {list(class_names)}"
    which = f"every class with fewer than {cfg.synthetic_classes_below} labeled maps" if cfg.synthetic_classes_below \
        else "every class"
    return (SyntheticTopUp(tax, cfg.synthetic_min_per_class, cfg.synthetic_map_size, seed, cfg.synthetic_classes_below),
            f"on: {tax} synthetic maps until {which} has {cfg.synthetic_min_per_class}")


def run_self_training(teacher_dir: str | Path, teacher_val: Mapping[str, float], train_file: Path, val_file: Path,
                      unlabeled_file: Path, settings: Mapping[str, Any], train_config: Mapping[str, Any], seed: int,
                      device: str, out_dir: str | Path) -> dict[str, Any]:
    """Self-train from the selected candidate and write the chosen model (student or teacher) to ``out_dir``.

    Args:
        teacher_val: The teacher's best validation metrics (``accuracy``, ``macro_f1``), reported.
        unlabeled_file: The pool (may not exist: no unlabeled maps). Its labels, if any, are never read.
        settings: :class:`SelfTrainConfig` overrides.
            ``keep``: ``student`` sends the student on whatever validation says; ``would_keep`` reports what
            validation chose either way.

    Returns:
        The report: ``status`` (off / skipped / student / teacher), the rounds' pseudo-label counts per class,
        both validation scores and which model went on.
    """
    from waferflow.data.contract import load_dataset
    from waferflow.train.selftrain import self_train

    cfg = load_config(SelfTrainConfig, overrides=dict(settings))
    out = Path(out_dir)
    teacher = Path(teacher_dir)
    report: dict[str, Any] = {"rounds": cfg.rounds, "teacher_val": dict(teacher_val)}
    if cfg.rounds == 0 or not unlabeled_file.exists():
        why = "off: self_training.rounds is 0" if cfg.rounds == 0 else "skipped: the data has no unlabeled maps"
        shutil.copytree(teacher, out, dirs_exist_ok=True)
        return {**report, "status": why, "chosen": "teacher"}
    student_cfg = _student_config(cfg, train_config, teacher, seed, device)
    train_ds = load_dataset(train_file, require_labels=True)
    val_ds = load_dataset(val_file, require_labels=True)
    pool = load_dataset(unlabeled_file)
    if pool.labeled:  # a pool with labels (a benchmark's): they are dropped here, never read
        pool = dataclasses.replace(pool, labels=None, class_names=())
    top_up, report["synthetic"] = _top_up(cfg, train_ds.class_names, seed)
    with tempfile.TemporaryDirectory(prefix="waferflow-student-", dir=out.parent) as tmp:
        result = self_train(student_cfg, teacher, train_ds, val_ds, pool, Path(tmp) / "student", rounds=cfg.rounds,
                            threshold=cfg.threshold, max_per_class_ratio=cfg.max_per_class_ratio, tta=cfg.tta,
                            top_up=top_up, engine=cfg.cpu_engine, rotations=cfg.tta_rotations)
        student_val = {k: float(result.best_val[k]) for k in ("accuracy", "macro_f1")}
        report["would_keep"] = "student" if student_val["macro_f1"] > float(teacher_val["macro_f1"]) else "teacher"
        won = report["would_keep"] == "student" or cfg.keep == "student"
        shutil.copytree(Path(tmp) / "student" if won else teacher, out, dirs_exist_ok=True)
    rounds = [{"round": r["round"], "kept": r["kept"], "unlabeled_maps": r["unlabeled_maps"],
               "kept_per_class": {c: v["kept"] for c, v in r["per_class"].items()},
               "synthetic_per_class": r.get("synthetic_per_class", {}),
               "student_val_macro_f1": float(r["student_best_val"]["macro_f1"]), "seconds": r["seconds"],
               "engine": r["engine"], "tta_views": r["tta_views"],
               **({"rotations_off": r["rotations_off"]} if "rotations_off" in r else {})}
              for r in result.extra["self_training"]]
    report.update(status="student" if won else "teacher", chosen="student" if won else "teacher",
                  student_val=student_val, pool=len(pool), per_round=rounds,
                  student_budget=result.extra.get("budget"))
    atomic_write_json(out / "self_training_report.json", report)
    return report


def describe(report: Mapping[str, Any]) -> str:
    """One line for the log and the run summary."""
    if "per_round" not in report:
        return f"self-training {report['status']}"
    kept = ", ".join(f"r{r['round']}: {r['kept']} of {r['unlabeled_maps']}"
                     + (f" + {sum(r['synthetic_per_class'].values())} synthetic" if r.get("synthetic_per_class") else "")
                     for r in report["per_round"])
    return (f"self-training: pseudo-labels kept {kept}; val macro-F1 teacher {report['teacher_val']['macro_f1']:.4f}"
            f" -> student {report['student_val']['macro_f1']:.4f}; {report['chosen']} goes on"
            + (" (self_training.keep=student; validation would keep the teacher)"
               if report.get("would_keep", report["chosen"]) != report["chosen"] else ""))

