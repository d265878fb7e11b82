"""Run one real compiled component (the data stage) inside the built CPU image with docker.

    python images/smoke_component.py [--image localhost/waferflow-cpu:0.1.0] [--n 500] [--out /tmp/wf-smoke]

It compiles the training pipeline, takes the data task's exact container command from the YAML, feeds it a
KFP executor input (500 synthetic maps at 64 px) and runs it with no network as the image's non-root user.
Prints JSON: exit code, seconds, maps written and the data hash the component recorded.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> int:
    from waferflow import __version__

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=f"localhost/waferflow-cpu:{__version__}")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from waferflow.orchestration.cluster import compile_all
    from waferflow.profiles import get_profile

    out = Path(a.out or tempfile.mkdtemp(prefix="wf-smoke-"))
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o777)  # the container runs as uid 10001
    with tempfile.TemporaryDirectory() as tmp:
        path = compile_all(tmp, get_profile("local", ["cluster.image_registry=" + a.image.rsplit("/waferflow-", 1)[0]]))
        spec = next(yaml.safe_load_all(Path(path["waferflow-training"]).read_text()))
    c = spec["deploymentSpec"]["executors"]["exec-prepare-data"]["container"]

    def _art(name):
        return {"artifacts": [{"name": name, "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
                               "uri": f"/out/{name}", "metadata": {}}]}

    ei = {"inputs": {"parameterValues": {"source": "", "source_fingerprint": "", "n_maps": a.n, "map_size": 64,
                                         "taxonomy": "seed20", "seed": 0}},
          "outputs": {"artifacts": {"dataset": _art("dataset"), "unlabeled": _art("unlabeled")},
                      "outputFile": "/out/executor_output.json"}}
    args = [x.replace("{{$}}", json.dumps(ei)) for x in c["args"]]
    cmd = ["docker", "run", "--rm", "--network", "none", "-v", f"{out}:/out", "-e", "WAFERFLOW_PROGRESS=0",
           "--entrypoint", c["command"][0], a.image, *c["command"][1:], *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
    res = {"image": a.image, "rc": r.returncode, "seconds": round(secs, 1), "out": str(out)}
    if r.returncode == 0:
        meta = json.loads((out / "executor_output.json").read_text())["artifacts"]["dataset"]["artifacts"][0]["metadata"]
        res.update(n_maps=meta["n"], data_hash=meta["data_hash"], source=meta["source"])
    print(json.dumps(res))
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
