"""Promotion gates: small pure functions over evaluation dicts.

A *candidate* (and a *champion*) is a mapping::

    {"metrics": <eval dict>, "int8_metrics": <eval dict> | None, "latency": <latency JSON>,
     "version": "3"  # champion only, optional: which registry version these numbers belong to}

where the eval dict is what :func:`waferflow.evaluation.metrics_from_logits` returns and the latency JSON is
what ``waferflow bench latency`` writes. The champion must have been evaluated on the *same* test set in the
same run; the caller does that. :func:`check_gates` returns every result at once, so a reviewer sees all
violations, not just the first.

A few hundred labels make a test split of a hundred maps, where a point estimate is mostly noise. So every gated
test metric carries a confidence interval (Wilson for accuracy and per-class recall, a bootstrap over the
confusion matrix for macro-F1), and "not worse than the champion" is a paired test on the same maps: McNemar's
exact test for accuracy and a paired bootstrap for macro-F1, when both sides bring per-map predictions
(``"predictions"``, with the candidate's ``"labels"``). ``GateConfig.judge`` says whether an absolute gate is
judged on the point estimate or on the interval (a miss then means the whole interval lies on the wrong side).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

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
        champion_accuracy_tolerance: The candidate may be this much below the champion's accuracy (used by the
            point comparison when per-map predictions are missing, e.g. the registry's re-check of old versions).
        champion_macro_f1_tolerance: The same for macro-F1.
        confidence: Level of every confidence interval (0.95 = 95%).
        judge: ``"point"``: an absolute gate compares the point estimate with its threshold; ``"interval"``: it
            fails only when the whole confidence interval is on the wrong side (for small test sets).
        champion_alpha: The paired test against the champion fails when the candidate is worse with one-sided
            p < ``champion_alpha``.
        bootstrap_samples: Resamples of the macro-F1 bootstraps.
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
    confidence: float = 0.95
    judge: str = "point"
    champion_alpha: float = 0.05
    bootstrap_samples: int = 1000

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "min_macro_f1", "min_class_recall", "max_int8_accuracy_drop",
                     "champion_accuracy_tolerance", "champion_macro_f1_tolerance", "confidence", "champion_alpha"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ConfigError(f"gate '{name}' must be a number in [0, 1], got {v!r}")
        if not (isinstance(self.max_p99_latency_ms, (int, float)) and self.max_p99_latency_ms > 0):
            raise ConfigError(f"gate 'max_p99_latency_ms' must be > 0, got {self.max_p99_latency_ms!r}")
        if not self.deployment_form:
            raise ConfigError("gate 'deployment_form' must name a latency form, e.g. onnx_int8")
        if self.judge not in ("point", "interval"):
            raise ConfigError(f"gate 'judge' must be 'point' or 'interval', got {self.judge!r}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"gate 'confidence' must be in [0.5, 1), got {self.confidence!r}; e.g. 0.95")
        if not (isinstance(self.bootstrap_samples, int) and self.bootstrap_samples >= 100):
            raise ConfigError(f"gate 'bootstrap_samples' must be an integer >= 100, got {self.bootstrap_samples!r}")

    def describe(self) -> list[str]:
        """One line per gate: the thresholds a run is judged by (printed before training)."""
        how = "point estimate" if self.judge == "point" else f"{self.confidence:.0%} interval (fails only when " \
            "the whole interval misses)"
        return [
            f"accuracy >= {self.min_accuracy:g}, macro-F1 >= {self.min_macro_f1:g}, every class's recall >= "
            f"{self.min_class_recall:g}; judged on the {how}",
            f"INT8 accuracy drop <= {self.max_int8_accuracy_drop:g}; p99 latency of {self.deployment_form} <= "
            f"{self.max_p99_latency_ms:g} ms",
            f"not worse than the champion on the same test maps: McNemar (accuracy) and paired bootstrap "
            f"(macro-F1), one-sided p >= {self.champion_alpha:g}",
        ]


@dataclass(frozen=True)
class GateResult:
    """One gate: ``value op threshold`` -> ``passed``. ``value`` is None when it could not be measured.

    ``ci_low``/``ci_high`` bound ``value`` at the config's confidence (None where no interval applies);
    ``p_value`` is the paired test's one-sided p against the champion.
    """

    name: str
    value: float | None
    threshold: float
    op: str
    passed: bool
    detail: str = ""
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None

    def value_text(self) -> str:
        """``0.8652 [0.7790, 0.9213]`` (``+0.0040 [...], p=0.31`` for a paired test), or ``n/a``."""
        if self.value is None:
            return "n/a"
        ci = f" [{self.ci_low:.4f}, {self.ci_high:.4f}]" if self.ci_low is not None else ""
        if self.p_value is not None:
            return f"{self.value:+.4f}{ci}, p={self.p_value:.3g}"
        return f"{self.value:.4f}{ci}"

    def describe(self) -> str:
        rule = f"one-sided p >= {self.threshold:g}" if self.p_value is not None else f"{self.op} {self.threshold:.4g}"
        return f"{self.name}: {self.value_text()} ({rule}) -> {'pass' if self.passed else 'FAIL'}" + (
            f" ({self.detail})" if self.detail else "")

    def reason(self) -> str:
        """Why this gate failed, short: ``macro_f1 0.7100 [0.6200, 0.8000] < 0.85 (detail)``."""
        if self.p_value is not None:
            return f"{self.name} {self.value_text()} < {self.threshold:g}: worse than the champion on the same maps"
        neg = {">=": "<", "<=": ">"}.get(self.op, "fails")
        return f"{self.name} {self.value_text()} {neg} {self.threshold:g}" + (f" ({self.detail})" if self.detail
                                                                              else "")


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

    @property
    def reason(self) -> str:
        """One line: ``passed every gate``, or ``failed: <gate> <value> [<ci>] < <threshold> (...); ...``."""
        if self.passed:
            return "passed every gate" + (f" (not worse than champion v{self.champion_version})"
                                          if self.champion_version else "")
        return "failed: " + "; ".join(r.reason() for r in self.violations)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "reason": self.reason,
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
        level = f"{self.config.confidence:.0%}"
        rows = [f"| gate | value [{level} interval] | rule | verdict | detail |", "|---|---|---|---|---|"]
        for r in self.results:
            rows.append(f"| {r.name} | {r.value_text()} | {r.op} {r.threshold:.4g} | "
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


def _result(name: str, value: float | None, threshold: float, op: str, detail: str = "",
            ci: tuple[float, float] | None = None, cfg: GateConfig | None = None) -> GateResult:
    """A result; with ``cfg.judge == "interval"`` and an interval, the end nearest to passing is judged."""
    judged = value
    if value is not None and ci is not None and cfg is not None and cfg.judge == "interval":
        judged = ci[1] if op == ">=" else ci[0]
    passed = judged is not None and OPS[op](judged, threshold)
    lo, hi = (None, None) if ci is None else (float(ci[0]), float(ci[1]))
    return GateResult(name, value, float(threshold), op, bool(passed), detail, lo, hi)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (well-behaved at 0/n, n/n and small n)."""
    from scipy.stats import binomtest

    if n <= 0:
        return 0.0, 1.0
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _macro_f1_from_counts(cm: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """Macro-F1 over the classes present (row sum > 0) of confusion matrices ``[..., K, K]``, as evaluation does;
    with ``classes`` (a boolean mask over K), over the present classes among those only."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    true, pred = cm.sum(-1), cm.sum(-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(true + pred > 0, 2 * tp / (true + pred), 0.0)
    present = true > 0
    if classes is not None:
        present = present & np.asarray(classes, dtype=bool)
    return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def bootstrap_macro_f1(confusion: Sequence[Sequence[int]], confidence: float = 0.95, samples: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1, resampling the test maps.

    The confusion matrix holds every (true, predicted) pair of the test set, so resampling its cells
    multinomially is resampling the maps.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    n = int(cm.sum())
    if n == 0:
        return 0.0, 1.0
    draws = np.random.default_rng(seed).multinomial(n, (cm / n).ravel(), size=samples).reshape(samples, *cm.shape)
    f1 = _macro_f1_from_counts(draws)
    a = (1 - confidence) / 2
    return float(np.quantile(f1, a)), float(np.quantile(f1, 1 - a))


def _class_recalls(metrics: Mapping) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """``{class: (correct, support)}`` for classes with test support, and the classes without."""
    per_class = metrics.get("per_class") if isinstance(metrics, Mapping) else None
    if not isinstance(per_class, Mapping) or not per_class:
        raise GateInputError("metrics: missing 'per_class' recalls; pass the dict written by waferflow evaluate")
    counts, unmeasured = {}, []
    for name, d in per_class.items():
        support = int(_num(d, "support", what=f"metrics.per_class.{name}"))
        if support <= 0:
            unmeasured.append(name)
        else:
            counts[name] = (int(round(_num(d, "recall", what=f"metrics.per_class.{name}") * support)), support)
    return counts, unmeasured


def gate_accuracy(metrics: Mapping, cfg: GateConfig) -> GateResult:
    """Test accuracy >= ``cfg.min_accuracy``, with its Wilson interval over the ``n`` test maps."""
    acc = _num(metrics, "overall", "accuracy", what="metrics")
    n = int(_num(metrics, "overall", "n", what="metrics"))
    ci = wilson_interval(int(round(acc * n)), n, cfg.confidence)
    return _result("accuracy", acc, cfg.min_accuracy, ">=", f"n={n}", ci, cfg)


def gate_macro_f1(metrics: Mapping, cfg: GateConfig) -> GateResult:
    """Test macro-F1 >= ``cfg.min_macro_f1``, with a bootstrap interval (needs ``confusion_matrix``)."""
    f1 = _num(metrics, "overall", "macro_f1", what="metrics")
    cm = metrics.get("confusion_matrix")
    if not isinstance(cm, list) or not cm:
        raise GateInputError("metrics: missing 'confusion_matrix' (needed for the macro-F1 interval); pass the "
                             "dict written by waferflow evaluate")
    ci = bootstrap_macro_f1(cm, cfg.confidence, cfg.bootstrap_samples)
    return _result("macro_f1", f1, cfg.min_macro_f1, ">=", f"bootstrap over {int(np.sum(cm))} maps", ci, cfg)


def gate_per_class_recall(metrics: Mapping, cfg: GateConfig) -> GateResult:
    """The lowest recall over classes present in the test set >= ``cfg.min_class_recall``.

    Every class's recall gets a Wilson interval; the gate reports the weakest class (its interval). With
    ``judge="interval"`` a class misses only when its whole interval is below the floor. The detail names every
    class below the floor and every class with no test support (unmeasured).
    """
    counts, unmeasured = _class_recalls(metrics)
    if not counts:
        return _result("per_class_recall", None, cfg.min_class_recall, ">=", "no class has test support")
    results = {n: _result("recall", k / s, cfg.min_class_recall, ">=", "", wilson_interval(k, s, cfg.confidence),
                          cfg) for n, (k, s) in counts.items()}
    low = sorted((n for n, r in results.items() if not r.passed), key=lambda n: results[n].value)
    worst = low[0] if low else min(results, key=lambda n: (results[n].value, -counts[n][1]))
    parts = ["below floor: " + ", ".join(f"{n}={results[n].value_text()} (n={counts[n][1]})" for n in low)] if low \
        else [f"lowest: {worst} (n={counts[worst][1]})"]
    if unmeasured:
        parts.append("no test support: " + ", ".join(unmeasured))
    w = results[worst]
    return GateResult("per_class_recall", w.value, float(cfg.min_class_recall), ">=", not low, "; ".join(parts),
                      w.ci_low, w.ci_high)


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


def _paired_arrays(candidate: Mapping, champion: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, candidate predictions, champion predictions) on the same maps, or None when not given."""
    y, a, b = candidate.get("labels"), candidate.get("predictions"), champion.get("predictions")
    if y is None or a is None or b is None:
        return None
    y, a, b = (np.asarray(v, dtype=np.int64).ravel() for v in (y, a, b))
    if not (len(y) == len(a) == len(b)) or len(y) == 0:
        raise GateInputError(f"paired test needs predictions of both models on the same maps: {len(y)} labels, "
                             f"{len(a)} candidate and {len(b)} champion predictions; evaluate both on the same "
                             "test set")
    return y, a, b


def mcnemar_worse(y: np.ndarray, cand: np.ndarray, champ: np.ndarray) -> tuple[int, int, float]:
    """Exact one-sided McNemar test that the candidate is *less* accurate than the champion on the same maps.

    Returns:
        ``(b, c, p)``: maps only the champion got right, maps only the candidate got right, and the p-value of
        ``b`` or more of the ``b + c`` discordant maps going the champion's way under "equally accurate".
    """
    from scipy.stats import binomtest

    ok_a, ok_b = cand == y, champ == y
    b, c = int((~ok_a & ok_b).sum()), int((ok_a & ~ok_b).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)
    return b, c, p


def paired_bootstrap_macro_f1(y: np.ndarray, cand: np.ndarray, champ: np.ndarray, k: int, confidence: float = 0.95,
                              samples: int = 1000, seed: int = 0,
                              classes: np.ndarray | None = None) -> tuple[float, float, float]:
    """Candidate minus champion macro-F1 on the same resampled maps: ``(low, high, p)`` where ``p`` is the
    share of resamples in which the candidate is not better (one-sided evidence that it is worse). ``classes``: a
    boolean mask over the K classes that the macro average takes (default: every class present)."""
    rng = np.random.default_rng(seed)
    n = len(y)
    idx = rng.integers(0, n, size=(samples, n))
    rows = np.arange(samples)[:, None] * k * k

    def cms(pred):
        flat = (rows + y[idx] * k + pred[idx]).ravel()
        return np.bincount(flat, minlength=samples * k * k).reshape(samples, k, k)

    diff = _macro_f1_from_counts(cms(cand), classes) - _macro_f1_from_counts(cms(champ), classes)
    a = (1 - confidence) / 2
    return float(np.quantile(diff, a)), float(np.quantile(diff, 1 - a)), float(np.mean(diff >= 0))


def gate_vs_champion(candidate_metrics: Mapping, champion_metrics: Mapping, cfg: GateConfig,
                     champion_version: str | None = None, candidate: Mapping | None = None,
                     champion: Mapping | None = None) -> list[GateResult]:
    """Not worse than the champion on the same test maps.

    With per-map predictions of both (``candidate["labels"]``, ``candidate["predictions"]``,
    ``champion["predictions"]``), accuracy is judged by McNemar's exact test and macro-F1 by a paired bootstrap;
    each fails when the candidate is worse with one-sided p < ``cfg.champion_alpha``. Without them (the
    registry's re-check of versions logged before predictions were kept), the difference of the two numbers must
    be >= -tolerance.
    """
    who = f"champion v{champion_version}" if champion_version else "champion"
    paired = _paired_arrays(candidate or {}, champion or {})
    out = []
    for key, tol in (("accuracy", cfg.champion_accuracy_tolerance), ("macro_f1", cfg.champion_macro_f1_tolerance)):
        c = _num(candidate_metrics, "overall", key, what="metrics")
        ch = _num(champion_metrics, "overall", key, what="champion metrics")
        if paired is None:
            out.append(_result(f"vs_champion_{key}", c - ch, -tol, ">=",
                               f"candidate {c:.4f} vs {who} {ch:.4f}; point comparison (no per-map predictions)"))
            continue
        y, a, b = paired
        if key == "accuracy":
            nb, nc, p = mcnemar_worse(y, a, b)
            n = len(y)
            se = math.sqrt(max(nb + nc - (nc - nb) ** 2 / n, 0.0)) / n
            z = _z(cfg.confidence)
            ci = ((nc - nb) / n - z * se, (nc - nb) / n + z * se)
            detail = (f"McNemar on {n} maps: only candidate right {nc}, only {who} right {nb}, one-sided p={p:.3g}; "
                      f"candidate {c:.4f} vs {who} {ch:.4f}")
        else:
            k = len(candidate_metrics.get("class_names") or []) or int(max(y.max(), a.max(), b.max())) + 1
            lo, hi, p = paired_bootstrap_macro_f1(y, a, b, k, cfg.confidence, cfg.bootstrap_samples)
            ci = (lo, hi)
            detail = f"paired bootstrap on {len(y)} maps, one-sided p={p:.3g}; candidate {c:.4f} vs {who} {ch:.4f}"
        r = GateResult(f"vs_champion_{key}", c - ch, float(cfg.champion_alpha), "p>=", p >= cfg.champion_alpha,
                       detail, float(ci[0]), float(ci[1]), p)
        out.append(r)
    return out


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / 2))


def check_gates(candidate: Mapping[str, Any], cfg: GateConfig | None = None,
                champion: Mapping[str, Any] | None = None) -> GateReport:
    """Run every gate and return all results at once.

    Args:
        candidate: ``{"metrics": eval dict, "int8_metrics": eval dict | None, "latency": latency JSON}``, plus
            ``"labels"`` and ``"predictions"`` (per test map) for the paired test against the champion.
            ``metrics`` is the deployed form's evaluation (what the absolute and champion gates read); the INT8
            drop is measured from ``"reference_metrics"`` (the FP32 model's, default ``metrics``) to INT8's.
        cfg: Thresholds; defaults to :class:`GateConfig()`.
        champion: The same for the current champion evaluated on the same test set (may carry "version" and
            ``"predictions"`` on the same maps), or None when there is no champion (then only the absolute gates
            apply).

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
    int8 = gate_int8_drop(candidate.get("reference_metrics") or m, candidate.get("int8_metrics"), cfg)
    if int8 is not None:
        results.append(int8)
    results.append(gate_p99_latency(candidate.get("latency"), cfg))
    champ_version = None
    if champion is not None:
        if not isinstance(champion, Mapping) or "metrics" not in champion:
            raise GateInputError("champion must be a mapping with 'metrics' evaluated on the same test set")
        champ_version = None if champion.get("version") is None else str(champion["version"])
        results.extend(gate_vs_champion(m, champion["metrics"], cfg, champ_version, candidate, champion))
    return GateReport(tuple(results), champion_version=champ_version, config=cfg)
