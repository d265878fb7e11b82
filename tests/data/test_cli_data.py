"""The data CLI through waferflow.cli.main: generate, ingest, split, inspect."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from waferflow.cli import main
from waferflow.data.contract import load_dataset


def test_help_for_every_subcommand(capsys):
    for cmd, words in [("generate", ["--n", "--seed", "--taxonomy"]), ("ingest", ["LSWMD", "--size", "--unlabeled-out"]),
                       ("split", ["--labels-per-class", "--val", "lot"]), ("inspect", ["--per-class", "grid"])]:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert all(w in out for w in words), (cmd, out)


def test_ingest_lswmd_cli(tmp_path, lswmd_small, capsys):
    assert main(["ingest", str(lswmd_small), "--out", str(tmp_path / "wm.npz"), "--size", "32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_maps"] == 36 and info["unlabeled_maps"] == 12 and info["layout"] == "fixed"
    assert load_dataset(tmp_path / "wm.npz").maps.shape == (36, 32, 32)
    assert len(load_dataset(tmp_path / "wm.unlabeled.npz")) == 12
    assert main(["ingest", str(lswmd_small), "--out", str(tmp_path / "v.npz"),
                 "--unlabeled-out", str(tmp_path / "u" / "unl.npz")]) == 0
    assert (tmp_path / "u" / "unl.npz").exists() and not load_dataset(tmp_path / "v.npz").fixed_size


def test_ingest_errors_exit_2_and_write_nothing(tmp_path, capsys, dump_pickle, evil):
    out = tmp_path / "out"
    marker = tmp_path / "pwned"
    bad = dump_pickle(evil(f"touch {marker}"), tmp_path / "LSWMD.pkl")
    assert main(["ingest", str(bad), "--out", str(out / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and not marker.exists()
    np.savez(tmp_path / "v.npz", maps=np.full((2, 4, 4), 9, np.uint8), labels=[0, 1], class_names=np.array(["a", "b"]))
    assert main(["ingest", str(tmp_path / "v.npz"), "--out", str(out / "x.npz")]) == 2
    assert "values must be 0/1/2" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing.npz"), "--out", str(out / "x.npz")]) == 2
    assert main(["ingest", str(tmp_path / "v.npz"), "--out", str(out / "x.txt")]) == 2
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        main(["ingest", str(tmp_path / "v.npz"), "--out", str(out / "x.npz"), "--size", "-3"])
    assert e.value.code == 2


def test_ingest_png_folder_cli(tmp_path, capsys):
    for c in ("a", "b"):
        (tmp_path / "png" / c).mkdir(parents=True)
        Image.fromarray(np.array([[0, 127], [255, 127]], np.uint8), mode="L").save(tmp_path / "png" / c / "m.png")
    assert main(["ingest", str(tmp_path / "png"), "--out", str(tmp_path / "p.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["coding"] == "scaled"
    assert load_dataset(tmp_path / "p.npz").get(0).tolist() == [[0, 1], [2, 1]]


def test_split_cli(tmp_path, wm811k_small, capsys):
    assert main(["split", str(wm811k_small), "--out", str(tmp_path / "s"), "--labels-per-class", "4",
                 "--val", "0.2", "--test", "0.2", "--seed", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert info["splits"] == {k: v["n_maps"] for k, v in man["splits"].items()}
    assert man["splits"]["train"]["n_maps"] == 36 and man["seed"] == 1
    assert {p.name for p in (tmp_path / "s").glob("*.npz")} == {"train.npz", "val.npz", "test.npz", "unlabeled.npz"}


def test_split_cli_errors(tmp_path, capsys, lswmd_small):
    main(["ingest", str(lswmd_small), "--out", str(tmp_path / "wm.npz")])
    capsys.readouterr()
    assert main(["split", str(tmp_path / "wm.unlabeled.npz"), "--out", str(tmp_path / "s")]) == 2
    assert "needs labels" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    with pytest.raises(SystemExit) as e:
        main(["split", str(tmp_path / "wm.npz"), "--out", str(tmp_path / "s"), "--val", "1.5"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["split", str(tmp_path / "wm.npz"), "--out", str(tmp_path / "s"), "--labels-per-class", "3",
              "--label-fraction", "0.5"])


def test_inspect_cli_table_and_grid(tmp_path, wm811k_small, capsys):
    grid = tmp_path / "g.png"
    assert main(["inspect", str(wm811k_small), "--out", str(grid), "--per-class", "3"]) == 0
    out = capsys.readouterr().out
    assert "Edge-Ring" in out and "median" in out and "maps: 200" in out
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 9 * 50
    assert main(["inspect", str(wm811k_small), "--out", str(grid), "--json", "--per-class", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(c["count"] for c in summary["classes"]) == 200 and summary["shape"]["h_min"] >= 25
    assert main(["inspect", str(wm811k_small), "--out", str(tmp_path / "g.jpg")]) == 2
    assert main(["inspect", str(tmp_path)]) == 2
    assert "waferflow ingest" in capsys.readouterr().err


def test_inspect_unlabeled(tmp_path, lswmd_small, capsys):
    main(["ingest", str(lswmd_small), "--out", str(tmp_path / "wm.npz")])
    assert main(["inspect", str(tmp_path / "wm.unlabeled.npz")]) == 0
    assert "(unlabeled)" in capsys.readouterr().out
    assert (tmp_path / "wm.unlabeled.grid.png").exists()


def test_generate_same_seed_same_bytes(tmp_path, capsys):
    a, b, c = (tmp_path / n for n in ("a.npz", "b.npz", "c.npz"))
    for path, seed in ((a, 7), (b, 7), (c, 8)):
        assert main(["generate", "--n", "40", "--size", "32", "--seed", str(seed), "--taxonomy", "wm811k",
                     "--out", str(path)]) == 0
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    ds = load_dataset(a, require_labels=True)
    assert ds.maps.shape == (40, 32, 32) and ds.num_classes == 9
    capsys.readouterr()
    assert main(["generate", "--n", "5", "--out", str(tmp_path / "x.txt")]) == 2
    assert not (tmp_path / "x.txt").exists()


def test_generate_background_fail_rate_option(tmp_path, capsys):
    """seed20 defaults to a small background; --background-fail-rate sets it; a bad range is a clear error."""
    def fail_share(path):
        m = load_dataset(path).maps
        return float((m == 2).sum() / (m > 0).sum())

    clean, noisy = tmp_path / "clean.npz", tmp_path / "noisy.npz"
    assert main(["generate", "--n", "200", "--size", "32", "--out", str(clean)]) == 0
    assert main(["generate", "--n", "200", "--size", "32", "--background-fail-rate", "0.3", "0.4",
                 "--out", str(noisy)]) == 0
    assert fail_share(noisy) > fail_share(clean) + 0.2
    capsys.readouterr()
    bad = tmp_path / "bad.npz"
    assert main(["generate", "--n", "5", "--background-fail-rate", "0.5", "0.1", "--out", str(bad)]) == 2
    assert "background_fail_rate" in capsys.readouterr().err and not bad.exists()
