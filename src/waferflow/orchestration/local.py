"""Run the training pipeline on this machine through ``kfp.local``: SubprocessRunner (current venv) or
DockerRunner (every task in the CPU image; ``waferflow.orchestration.containers``).

kfp.local silently drops what only a cluster honours (kfp-kubernetes node selectors, tolerations, accelerator
limits, Secret-backed env). This launcher does not depend on any of it: it sets the same configuration in the
environment the task subprocesses inherit (``MLFLOW_TRACKING_URI`` and friends) and prints what it set.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from waferflow.errors import ConfigError, WaferflowError
from waferflow.orchestration.runtime import RUN_DIR_ENV, STAGE_LOG_ENV
from waferflow.orchestration.sources import fingerprint
from waferflow.profiles import Profile
from waferflow.selection import candidate_name

#: Stages whose outputs are content-addressed by their inputs; a repeated run should hit the cache for them.
DATA_STAGES = ("data", "split")


@dataclass
class RunResult:
    """What a local run produced.

    Attributes:
        run_dir: Folder of this run's launcher records (stages.jsonl, summary.json, run.json).
        summary: The report stage's summary (candidates, test metrics, latency, TensorRT, gates, version).
        stages: Per-stage records (name, seconds, ...), in finishing order; cached stages have ``cached``.
        cache_hits: Task names kfp.local served from its cache.
        champion: The registry's champion version after the run (None when there is none).
        wall_seconds: Wall time of the pipeline.
        tracking_uri: MLflow tracking URI used.
    """

    run_dir: Path
    summary: dict
    stages: list[dict] = field(default_factory=list)
    cache_hits: list[str] = field(default_factory=list)
    champion: str | None = None
    wall_seconds: float = 0.0
    tracking_uri: str = ""


def embedded_tracking_uri(workdir: Path) -> str:
    """The embedded MLflow store of a workdir (SQLite; artifacts under ``<workdir>/mlartifacts``)."""
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


class _DropExecutorInput(io.TextIOBase):
    """kfp's executor logs each task's whole executor input (a page of JSON per task) on stdout, which kfp.local
    relays; drop that block and keep every other line."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._buf = ""
        self._skip_indent: int | None = None

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(line + "\n")
        return len(s)

    def _line(self, line: str) -> None:
        indent = len(line) - len(line.lstrip())
        if self._skip_indent is not None:
            if line.strip() == "}" and indent <= self._skip_indent:
                self._skip_indent = None
            return
        if "Got executor_input:" in line:
            self._skip_indent = indent
            return
        self._inner.write(line)

    def flush(self) -> None:
        if self._buf and self._skip_indent is None:
            self._inner.write(self._buf)
            self._buf = ""
        self._inner.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def quiet_executor_input() -> Iterator[None]:
    """While the pipeline runs, stdout without kfp's executor-input dumps (see :class:`_DropExecutorInput`)."""
    old = sys.stdout
    sys.stdout = _DropExecutorInput(old)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = old


class _CacheHitRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if " cache hit " in msg and msg.startswith("Task "):
            self.hits.append(msg.split()[1])


def _source_and_fingerprint(path: str, flag: str) -> tuple[str, str]:
    """``(absolute path, content hash)`` of a local input, or ``("", "")`` for none."""
    if not path:
        return "", ""
    source = str(Path(path).expanduser().resolve())
    return source, fingerprint(source, flag)


def pipeline_arguments(profile: Profile, candidates: list[dict]) -> dict[str, Any]:
    """The training pipeline's arguments for ``profile`` (the data path made absolute and fingerprinted)."""
    data, fp = _source_and_fingerprint(profile.data, "--data")
    unlabeled, unlabeled_fp = _source_and_fingerprint(profile.unlabeled, "--unlabeled")
    return {
        "data_source": data,
        "data_fingerprint": fp,
        "unlabeled_source": unlabeled,
        "unlabeled_fingerprint": unlabeled_fp,
        "n_maps": profile.n_maps,
        "map_size": profile.map_size,
        "taxonomy": profile.taxonomy,
        "seed": profile.seed,
        "labels_per_class": profile.labels_per_class,
        "val_fraction": profile.val_fraction,
        "test_fraction": profile.test_fraction,
        "pool_size": profile.pool_size,
        "backbones": list(profile.backbones),
        "candidates": candidates,
        "source_settings": dict(profile.source),
        "self_training": dict(profile.self_training),
        "undo_class_weights": profile.undo_class_weights,
        "source_weight": profile.source_weight,
        "source_ensemble_below": profile.source_ensemble_below,
        "input_size": profile.input_size,
        "pretrained": profile.pretrained,
        "train_config": dict(profile.train),
        "epochs": dict(profile.epochs),
        "device": profile.device,
        "int8": profile.int8,
        "bench_iters": profile.bench_iters,
        "export_options": dict(profile.export),
        "gates": dict(profile.gates),
        "registered_model_name": profile.registered_model_name,
        "experiment": profile.experiment,
    }


RUNNERS = ("subprocess", "docker")


def run_local(profile: Profile, workdir: str | os.PathLike = "waferflow_runs", cache: bool = True,
              out=None, runner: str = "subprocess") -> RunResult:
    """Run the whole training pipeline through ``kfp.local`` on this machine.

    Args:
        profile: The run's profile (``waferflow.profiles.get_profile``).
        workdir: Folder for kfp outputs, the kfp cache, the embedded MLflow store and run records.
        cache: Use kfp.local's task cache (data stages are keyed on their inputs and parameters).
        out: Stream for progress lines (default stdout).
        runner: ``subprocess`` (this venv) or ``docker`` (each task in the profile's CPU image).

    Returns:
        A :class:`RunResult`.

    Raises:
        ConfigError: The profile asks for CUDA on a machine without it; an unknown runner; with ``docker``, no
            daemon or no image.
        WaferflowError: A pipeline task failed (its log is above; the exit handler recorded the failure).
    """
    out = out or sys.stdout
    if runner not in RUNNERS:
        raise ConfigError(f"unknown runner {runner!r}; choose one of: {', '.join(RUNNERS)}")
    wd = Path(workdir).expanduser().resolve()
    wd.mkdir(parents=True, exist_ok=True)
    if profile.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"profile {profile.name!r} trains on CUDA but this machine has no CUDA device; use --profile local "
                "(CPU) or run it on a cluster (waferflow submit)"
            )
    if runner == "docker":  # before anything is written: no daemon or no image leaves nothing behind
        from waferflow.orchestration.containers import check_image, docker_profile

        check_image(docker_profile(profile).cluster.image("cpu")).close()
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    run_dir = wd / "runs" / run_id
    run_dir.mkdir(parents=True)

    def say(msg: str) -> None:
        print(f"[waferflow] {msg}", file=out, flush=True)

    # What a cluster gets from the Secret / kfp-kubernetes, made explicit for the local subprocesses.
    env: dict[str, str] = {}
    uri = os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri(wd)
    env["MLFLOW_TRACKING_URI"] = uri
    env["WAFERFLOW_WORKDIR"] = str(wd)
    env[STAGE_LOG_ENV] = str(run_dir / "stages.jsonl")
    env[RUN_DIR_ENV] = str(run_dir)
    env.setdefault("MPLBACKEND", os.environ.get("MPLBACKEND", "Agg"))
    task_tmp = None
    if runner == "subprocess":
        # kfp's lightweight components write each task's code to `mktemp -d` and never remove it: a run would leave
        # one folder per task in /tmp. The tasks get a temporary folder of this run's own, removed at the end.
        task_tmp = tempfile.mkdtemp(prefix="waferflow-tasks-")
        env["TMPDIR"] = task_tmp
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _run(profile, wd, run_dir, uri, env, cache, say, runner)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if task_tmp:
            shutil.rmtree(task_tmp, ignore_errors=True)


def _kfp_runner(runner: str, profile: Profile, wd: Path, env: dict, say) -> tuple[Any, Profile, Path]:
    """(kfp.local runner, the profile it runs, pipeline root) for ``runner``."""
    from kfp import local

    if runner == "subprocess":
        return local.SubprocessRunner(use_venv=False), profile, wd / "kfp_outputs"
    from waferflow.orchestration import containers

    profile = containers.stage_data(containers.docker_profile(profile), wd)
    say(f"  every task runs in the image {profile.cluster.image('cpu')} (docker, host network; outputs under {wd})")
    return containers.make_runner(env, wd), profile, wd


def _run(profile: Profile, wd: Path, run_dir: Path, uri: str, env: dict, cache: bool, say,
         runner: str = "subprocess") -> RunResult:
    from kfp import local

    from waferflow.pipelines.training import build_pipeline, candidates_of

    say(f"profile {profile.name}; workdir {wd}")
    say(
        "kfp.local ignores kfp-kubernetes settings (Secret env, GPU node selector, tolerations, accelerator "
        "limits); passing the configuration through the environment instead:"
    )
    for k in ("MLFLOW_TRACKING_URI", "WAFERFLOW_WORKDIR"):
        say(f"  {k}={env[k]}" + ("  (from your environment)" if k == "MLFLOW_TRACKING_URI" and uri != embedded_tracking_uri(wd) else ""))
    for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if os.environ.get(k):
            say(f"  {k}=<set in your environment>")
    say(f"  every task runs here on the CPU (device={profile.device}); candidates in parallel: "
        f"{profile.parallelism or 'all'}")
    say(f"gates of profile {profile.name} (override with --set gates.KEY=VALUE):")
    for line in profile.gate_config().describe():
        say(f"  {line}")

    kfp_runner, profile, pipeline_root = _kfp_runner(runner, profile, wd, env, say)
    local.init(
        runner=kfp_runner,
        pipeline_root=str(pipeline_root),
        enable_caching=cache,
        cache_root=str(wd / "kfp_cache"),
        raise_on_error=True,
    )
    candidates = candidates_of(profile)
    args = pipeline_arguments(profile, candidates)
    say(f"{len(candidates)} candidate(s): " + ", ".join(candidate_name(c["strategy"], c["backbone"], c.get("init", "imagenet"))
                                                        for c in candidates))
    pipeline = build_pipeline(profile)
    rec = _CacheHitRecorder()
    root = logging.getLogger()
    root.addHandler(rec)
    old_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Said once above: kfp.local ignores cluster-only settings and runs the tasks in this venv.
            warnings.filterwarnings("ignore", message=r"Task .* have no effect in the current local runner")
            warnings.filterwarnings("ignore", message=r"You may be attemping to run a task that uses custom")
            with quiet_executor_input():
                pipeline(**args)
    except RuntimeError as e:
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        raise WaferflowError(
            f"the training pipeline failed: {msg} The failing task's log is above; outputs so far are under "
            f"{pipeline_root}; the failure is recorded in MLflow ({uri})"
        ) from None
    finally:
        root.removeHandler(rec)
        root.setLevel(old_level)
    wall = time.perf_counter() - t0

    stages = _read_jsonl(run_dir / "stages.jsonl")
    ran = {s["stage"] for s in stages}
    hits = list(dict.fromkeys(rec.hits))
    for h in hits:
        stages.append({"stage": _stage_of_task(h), "task": h, "cached": True, "seconds": 0.0})
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise WaferflowError(f"the pipeline finished but wrote no {summary_path}; see the task logs above")
    summary = json.loads(summary_path.read_text())
    champion = _champion(profile.registered_model_name, uri)
    result = RunResult(run_dir=run_dir, summary=summary, stages=stages, cache_hits=hits, champion=champion,
                       wall_seconds=round(wall, 1), tracking_uri=uri)
    from waferflow.config import atomic_write_json
    from waferflow.host import describe_host

    atomic_write_json(run_dir / "run.json", {
        "profile": profile.to_dict(), "wall_seconds": result.wall_seconds, "stages": stages,
        "cache_hits": hits, "champion": champion, "tracking_uri": uri, "ran": sorted(ran),
        "host": describe_host(profile.device),
    })
    return result


_TASK_TO_STAGE = {
    "prepare-data": "data", "split-data": "split", "adapt-batchnorm": "adapt_bn", "train-candidate": "train",
    "evaluate-model": "evaluate", "select-best": "select_best", "export-model": "export",
    "compile-tensorrt": "compile_trt", "start-run": "start_run", "log-to-mlflow": "log_mlflow",
    "register-model": "register", "build-report": "report", "promote-model": "promote", "finish-run": "finish_run",
    "source-model": "source_model", "self-train-model": "self_train", "correct-prior": "prior_correction",
    "interpolate-source": "source_interpolation",
}


def _stage_of_task(task: str) -> str:
    for prefix, stage in _TASK_TO_STAGE.items():
        if task.startswith(prefix):
            return stage
    return task


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _champion(name: str, uri: str) -> str | None:
    from waferflow.tracking import champion_version

    v = champion_version(uri, name=name)
    return None if v is None else str(v)


def format_result(result: RunResult) -> str:
    """The end-of-run text: stage times, comparison table, gates, champion, where things are."""
    from waferflow.gates import GateResult

    s = result.summary
    lines = ["", "=" * 78, "waferflow run: done in %.1f s" % result.wall_seconds, "=" * 78, "", "Stage times:"]
    for st in result.stages:
        tag = " (cache hit)" if st.get("cached") else ""
        label = st["stage"] + (f" [{st['candidate']}]" if st.get("candidate") else "")
        lines.append(f"  {label:<48} {st.get('seconds', 0):8.1f} s{tag}")
    if result.cache_hits:
        lines.append(f"  cache hits: {', '.join(result.cache_hits)}")
    lines += ["", s.get("comparison_markdown") or ""]
    t = s.get("test", {}).get("overall", {})
    if t:
        lines.append(f"Selected on validation: {s.get('candidates', {}).get('best')}; on the test split (read once): "
                     f"accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, balanced accuracy "
                     f"{t['balanced_accuracy']:.4f} (n={int(t['n'])})")
    lines.append("")
    gates = s.get("gates", {})
    champ_cmp = gates.get("champion_version")
    lines.append(f"Gates for version {s.get('version')}: {'PASSED' if gates.get('passed') else 'FAILED'}"
                 + (f" (compared with champion v{champ_cmp} on the same test set)" if champ_cmp else " (no champion yet)"))
    for g in gates.get("results", []):
        r = GateResult(**g)
        lines.append(f"  [{'pass' if r.passed else 'FAIL'}] {r.name}: {r.value_text()} {r.op} {r.threshold:g}"
                     + (f"   {r.detail}" if r.detail else ""))
    if gates.get("reason"):
        lines.append(f"  verdict: {gates['reason']}")
    lines.append("")
    q = s.get("label_queue") or {}
    if q:
        lines.append(f"Label queue: skipped ({q['skipped']})" if q.get("skipped") else
                     f"Label queue: {q.get('n')} maps to label in {q.get('folder')}/queue.csv (sheet queue.png)")
    lines.append(f"Champion: version {result.champion}" if result.champion else "Champion: none")
    lines.append(f"Report:   {s.get('report_markdown')}  (HTML: {s.get('report_html')})")
    lines.append(f"Run dir:  {result.run_dir}")
    lines.append(f"MLflow:   {result.tracking_uri}   (mlflow ui --backend-store-uri {result.tracking_uri})")
    return "\n".join(lines)
