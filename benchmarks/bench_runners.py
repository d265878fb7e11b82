"""Wall time of the training pipeline through kfp.local's two runners, in the same run: the subprocess runner
(this venv, the baseline) and the docker runner (every task in the CPU image).

    python -m benchmarks.bench_runners [--profile local] [--set KEY=VALUE ...] [--out FILE.json]

Each runner gets a fresh workdir and no cache. Needs a Docker daemon and the image (images/build.sh).
"""

import argparse
import tempfile
import time

from benchmarks._report import emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="local")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from waferflow.orchestration.local import run_local
    from waferflow.profiles import get_profile

    result: dict = {"profile": a.profile, "overrides": a.overrides, "runners": {}}
    for runner in ("subprocess", "docker"):
        with tempfile.TemporaryDirectory(prefix=f"bench-{runner}-") as wd:
            t0 = time.perf_counter()
            r = run_local(get_profile(a.profile, a.overrides), workdir=wd, cache=False, runner=runner)
            result["runners"][runner] = {
                "wall_seconds": round(time.perf_counter() - t0, 1), "pipeline_seconds": r.wall_seconds,
                "test_accuracy": r.summary["test"]["overall"]["accuracy"], "champion": r.champion,
                "stage_seconds": [[s["stage"], s.get("seconds")] for s in r.stages],
            }
    sub, dock = (result["runners"][k]["wall_seconds"] for k in ("subprocess", "docker"))
    result["docker_over_subprocess"] = round(dock / sub, 3)
    emit(result, a.out)


if __name__ == "__main__":
    main()
