"""Promotion gates: small pure functions over evaluation dicts.

A *candidate* (and a *champion*) is a mapping::

    {"metrics": <eval dict>, "int8_metrics": <eval dict> | None, "latency": <latency JSON>,
     "version": "3"  # champion only, optional: which registry version these numbers belong to}

where the eval dict is what :func:`waferflow.evaluation.metrics_from_logits` returns and the latency JSON is
what ``waferflow bench latency`` writes. The champion must have been evaluated on the *same* test set in the
same run; the caller does that. :func:`check_gates` returns every result at once, so a reviewer sees all
violations, not just the first.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from waferflow.errors import ConfigError, WaferflowError

OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t}


class GateInputError(WaferflowError, ValueError):
    """A candidate/champion dict handed to the gates is missing a required number."""


@dataclass(frozen=True)
class GateConfig:
    """Thresholds for promotion. Defaults are the design card's.

    Attributes:
        min_accuracy: Test accuracy floor.
        min_macro_f1: Test macro-F1 floor.
        min_class_recall: Recall floor for every class present in the test set.
        max_int8_accuracy_drop: FP32 accuracy minus INT8 accuracy, at most.
        max_p99_latency_ms: p99 single-map latency on ``deployment_form``, at most.
        deployment_form: Latency form the fab deploys (a key of ``latency["forms"]``).
        require_int8: When the deployment form is INT8, missing INT8 metrics fail the INT8 gate.
        champion_accuracy_tolerance: The candidate may be this much below the champion's accuracy.
        champion_macro_f1_tolerance: The candidate may be this much below the champion's macro-F1.
    """

    min_accuracy: float = 0.92
    min_macro_f1: float = 0.85
    min_class_recall: float = 0.5
    max_int8_accuracy_drop: float = 0.01
    max_p99_latency_ms: float = 50.0
    deployment_form: str = "onnx_int8"
    require_int8: bool = True
    champion_accuracy_tolerance: float = 0.005
    champion_macro_f1_tolerance: float = 0.005

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "min_macro_f1", "min_class_recall", "max_int8_accuracy_drop",
                     "champion_accuracy_tolerance", "champion_macro_f1_tolerance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ConfigError(f"gate '{name}' must be a number in [0, 1], got {v!r}")
        if not (isinstance(self.max_p99_latency_ms, (int, float)) and self.max_p99_latency_ms > 0):
            raise ConfigError(f"gate 'max_p99_latency_ms' must be > 0, got {self.max_p99_latency_ms!r}")
        if not self.deployment_form:
            raise ConfigError("gate 'deployment_form' must name a latency form, e.g. onnx_int8")


@dataclass(frozen=True)
class GateResult:
    """One gate: ``value op threshold`` -> ``passed``. ``value`` is None when it could not be measured."""

    name: str
    value: float | None
    threshold: float
    op: str
    passed: bool
    detail: str = ""

    def describe(self) -> str:
        v = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name}: {v} {self.op} {self.threshold:.4g} -> {'pass' if self.passed else 'FAIL'}" + (
            f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class GateReport:
    """Every gate result, plus which champion version (if any) the relative gates compared against."""

    results: tuple[GateResult, ...]
    champion_version: str | None = None
    config: GateConfig = field(default_factory=GateConfig)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def violations(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "champion_version": self.champion_version,
            "results": [dataclasses.asdict(r) for r in self.results],
            "config": dataclasses.asdict(self.config),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GateReport":
        return cls(
            results=tuple(GateResult(**r) for r in d["results"]),
            champion_version=d.get("champion_version"),
            config=GateConfig(**d.get("config", {})),
        )

    def markdown_table(self) -> str:
        rows = ["| gate | value | rule | verdict | detail |", "|---|---|---|---|---|"]
        for r in self.results:
            v = "n/a" if r.value is None else f"{r.value:.4f}"
            rows.append(f"| {r.name} | {v} | {r.op} {r.threshold:.4g} | "
                        f"{'pass' if r.passed else '**FAIL**'} | {r.detail} |")
        return "\n".join(rows)


def _num(d: Mapping[str, Any] | None, *keys: str, what: str) -> float:
    cur: Any = d
    for k in keys:
        if not isinstance(cur, Mapping) or k not in cur:
            raise GateInputError(f"{what}: missing '{'.'.join(keys)}'; pass the dict written by "
                                 "waferflow evaluate (metrics.json) / waferflow bench latency")
        cur = cur[k]
    if isinstance(cur, bool) or not isinstance(cur, (int, float)) or math.isnan(float(cur)):
        raise GateInputError(f"{what}: '{'.'.join(keys)}' must be a number, got {cur!r}")
    return float(cur)


def _result(name: str, value: float | None, threshold: float, op: str, detail: str = "") -> GateResult:
    passed = value is not None and OPS[op](value, threshold)
    return GateResult(name, value, float(threshold), op, bool(passed), detail)


def gate_accuracy(metrics: Mapping, cfg: GateConfig) -> GateResult:
    """Test accuracy >= ``cfg.min_accuracy``."""
    return _result("accuracy", _num(metrics, "overall", "accuracy", what="metrics"), cfg.min_accuracy, ">=")


def gate_macro_f1(metrics: Mapping, cfg: GateConfig) -> GateResult:
    """Test macro-F1 >= ``cfg.min_macro_f1``."""
    return _result("macro_f1", _num(metrics, "overall", "macro_f1", what="metrics"), cfg.min_macro_f1, ">=")


def gate_per_class_recall(metrics: Mapping, cfg: GateConfig) -> GateResult:
    """The lowest recall over classes present in the test set >= ``cfg.min_class_recall``.

    The detail names every class below the floor and every class with no test support (unmeasured).
    """
    per_class = metrics.get("per_class") if isinstance(metrics, Mapping) else None
    if not isinstance(per_class, Mapping) or not per_class:
        raise GateInputError("metrics: missing 'per_class' recalls; pass the dict written by waferflow evaluate")
    recalls = {}
    unmeasured = []
    for name, d in per_class.items():
        if _num(d, "support", what=f"metrics.per_class.{name}") <= 0:
            unmeasured.append(name)
        else:
            recalls[name] = _num(d, "recall", what=f"metrics.per_class.{name}")
    if not recalls:
        return _result("per_class_recall", None, cfg.min_class_recall, ">=", "no class has test support")
    low = sorted((n for n, r in recalls.items() if r < cfg.min_class_recall), key=recalls.get)
    parts = []
    if low:
        parts.append("below floor: " + ", ".join(f"{n}={recalls[n]:.3f}" for n in low))
    else:
        worst = min(recalls, key=recalls.get)
        parts.append(f"lowest: {worst}")
    if unmeasured:
        parts.append("no test support: " + ", ".join(unmeasured))
    return _result("per_class_recall", min(recalls.values()), cfg.min_class_recall, ">=", "; ".join(parts))


def gate_int8_drop(metrics: Mapping, int8_metrics: Mapping | None, cfg: GateConfig) -> GateResult | None:
    """FP32 accuracy - INT8 accuracy <= ``cfg.max_int8_accuracy_drop``.

    Returns None (gate not applicable) when there are no INT8 metrics and the deployment form is not INT8.
    """
    if int8_metrics is None:
        if cfg.require_int8 and "int8" in cfg.deployment_form:
            return _result("int8_accuracy_drop", None, cfg.max_int8_accuracy_drop, "<=",
                           f"no INT8 metrics, but the deployment form is {cfg.deployment_form}")
        return None
    drop = _num(metrics, "overall", "accuracy", what="metrics") - _num(
        int8_metrics, "overall", "accuracy", what="int8_metrics")
    return _result("int8_accuracy_drop", drop, cfg.max_int8_accuracy_drop, "<=")


def gate_p99_latency(latency: Mapping | None, cfg: GateConfig) -> GateResult:
    """p99 single-map latency on the deployment form <= ``cfg.max_p99_latency_ms``."""
    form = cfg.deployment_form
    forms = latency.get("forms") if isinstance(latency, Mapping) else None
    entry = forms.get(form) if isinstance(forms, Mapping) else None
    if not isinstance(entry, Mapping) or "p99_ms" not in entry:
        why = entry.get("skipped") if isinstance(entry, Mapping) and "skipped" in entry else "not measured"
        return _result("p99_latency_ms", None, cfg.max_p99_latency_ms, "<=", f"{form}: {why}")
    return _result("p99_latency_ms", _num(entry, "p99_ms", what=f"latency.forms.{form}"),
                   cfg.max_p99_latency_ms, "<=", form)


def gate_vs_champion(candidate_metrics: Mapping, champion_metrics: Mapping, cfg: GateConfig,
                     champion_version: str | None = None) -> list[GateResult]:
    """Candidate minus champion on accuracy and macro-F1, each >= -tolerance (same test set)."""
    out = []
    for key, tol in (("accuracy", cfg.champion_accuracy_tolerance), ("macro_f1", cfg.champion_macro_f1_tolerance)):
        c = _num(candidate_metrics, "overall", key, what="metrics")
        ch = _num(champion_metrics, "overall", key, what="champion metrics")
        who = f"champion v{champion_version}" if champion_version else "champion"
        out.append(_result(f"vs_champion_{key}", c - ch, -tol, ">=", f"candidate {c:.4f} vs {who} {ch:.4f}"))
    return out


def check_gates(candidate: Mapping[str, Any], cfg: GateConfig | None = None,
                champion: Mapping[str, Any] | None = None) -> GateReport:
    """Run every gate and return all results at once.

    Args:
        candidate: ``{"metrics": eval dict, "int8_metrics": eval dict | None, "latency": latency JSON}``.
        cfg: Thresholds; defaults to :class:`GateConfig()`.
        champion: The same for the current champion evaluated on the same test set (may carry "version"),
            or None when there is no champion (then only the absolute gates apply).

    Returns:
        A :class:`GateReport`; ``.passed`` is True only when every gate passed.

    Raises:
        GateInputError: A required number is missing or not a number.
    """
    cfg = cfg or GateConfig()
    if not isinstance(candidate, Mapping) or "metrics" not in candidate:
        raise GateInputError("candidate must be a mapping with 'metrics' (and 'int8_metrics', 'latency')")
    m = candidate["metrics"]
    results = [gate_accuracy(m, cfg), gate_macro_f1(m, cfg), gate_per_class_recall(m, cfg)]
    int8 = gate_int8_drop(m, candidate.get("int8_metrics"), cfg)
    if int8 is not None:
        results.append(int8)
    results.append(gate_p99_latency(candidate.get("latency"), cfg))
    champ_version = None
    if champion is not None:
        if not isinstance(champion, Mapping) or "metrics" not in champion:
            raise GateInputError("champion must be a mapping with 'metrics' evaluated on the same test set")
        champ_version = None if champion.get("version") is None else str(champion["version"])
        results.extend(gate_vs_champion(m, champion["metrics"], cfg, champ_version))
    return GateReport(tuple(results), champion_version=champ_version, config=cfg)
