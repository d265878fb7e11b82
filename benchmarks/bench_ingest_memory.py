"""Benchmark: peak memory of `waferflow ingest` on small crafted files, under the default limits.

Run from the repo root::

    python -m benchmarks.bench_ingest_memory [--baseline-src OTHER_CHECKOUT/src]

Builds, in a temporary folder, the crafted inputs of issue 14 (``tests/data/crafted.py``): the 824-byte xz pickle
whose 300 rows share one 1000x1000 map through the pickle memo, a 97 KB 10000x10000 PNG, and a ~650 KB npz with
an extra key that decompresses to 650 MiB; plus the small legacy LSWMD fixture as the ordinary case. Each is
ingested in its own process (``python -m waferflow ingest``) under ``/usr/bin/time -v``, whose "Maximum resident
set size" is the peak RSS (a child forked from this process itself would inherit its RSS as a floor). With
``--baseline-src`` the same cases also run with that source tree first on ``PYTHONPATH`` (e.g. an export of
``main``), in the same run. Prints one JSON object: per case, file size, exit code, peak RSS (MiB) and the
first line of stderr.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "data"))


def _extra_key_npz(path: Path, extra_mib: int = 650) -> Path:
    """A valid dataset .npz plus member ``junk`` of ``extra_mib`` MiB zeros, compressed, written in chunks."""
    import numpy as np
    from crafted import npz_bytes, valid_arrays

    path.write_bytes(npz_bytes(valid_arrays(), compressed=True))
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open("junk.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                 "shape": (extra_mib << 20,)})
        chunk = bytes(1 << 20)
        for _ in range(extra_mib):
            f.write(chunk)
    return path


def _cases(d: Path) -> dict[str, Path]:
    from crafted import memo_bomb_xz
    from PIL import Image

    (d / "png10k" / "a").mkdir(parents=True)
    Image.new("L", (10000, 10000), 0).save(d / "png10k" / "a" / "x.png")
    return {"lswmd_fixture_48_rows": REPO / "tests" / "fixtures" / "LSWMD_small.pkl",
            "memo_bomb_xz": memo_bomb_xz(d / "bomb.pkl.xz"),
            "png_10000x10000": d / "png10k",
            "npz_extra_key_650mib": _extra_key_npz(d / "extra.npz")}


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def _peak(src: Path, out: Path, pythonpath: str | None) -> dict:
    env = {**os.environ, "WAFERFLOW_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    r = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "waferflow", "ingest", str(src), "--out",
                        str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    rss_kib = int(next(x for x in r.stderr.splitlines() if "Maximum resident set size" in x).split()[-1])
    exit_code = int(next(x for x in r.stderr.splitlines() if "Exit status" in x).split()[-1])
    lines = [x for x in r.stderr.split("\tCommand being timed")[0].splitlines()
             if x.strip() and "warn" not in x.lower() and not x.startswith("Command exited")]
    for f in out.parent.glob(out.stem + "*"):
        f.unlink()
    return {"exit": exit_code, "peak_rss_mib": round(rss_kib / 1024, 1),
            "stderr": lines[-1][:200] if lines else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-src", default=None, help="another checkout's src/ to run the same cases with")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        print("this benchmark needs /usr/bin/time (GNU time); install it (apt-get install time)", file=sys.stderr)
        return 2
    result: dict = {"cases": {}}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name, src in _cases(d).items():
            row = {"input_bytes": _size(src), "this_tree": _peak(src, d / "o.npz", None)}
            if args.baseline_src:
                row["baseline"] = _peak(src, d / "o.npz", str(Path(args.baseline_src).resolve()))
            result["cases"][name] = row
    from benchmarks._report import emit

    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
