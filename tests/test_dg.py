"""Domain generalization: DomainBed layouts, splits, algorithms, resumable training, dg-eval, domain gap."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mamba_bench.dg.algorithms import ALGORITHMS, get_algorithm, mix_style, start_saliency
from mamba_bench.dg.data import open_dg_dataset, rotated_digits
from mamba_bench.dg.gap import mmd_rbf
from mamba_bench.dg.run import dg_eval, select_step, summary_table
from mamba_bench.dg.train import DGTrainConfig, train_cell
from mamba_bench.errors import DataLayoutError, UnknownNameError
from mamba_bench.models.registry import create_model, get_spec

PACS = ("art_painting", "cartoon", "photo", "sketch")
TINY = DGTrainConfig(dataset="rotated-digits", algorithm="erm", test_domain="75deg", seed=0, init="vmamba-nano",
                     steps=6, batch_size=4, image_size=32, eval_every=2, augment="none")


def _pacs(root: Path, classes=("dog", "horse"), per=5, domains=PACS, folder="PACS") -> Path:
    rng = np.random.default_rng(0)
    for d in domains:
        for c in classes:
            (root / folder / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                img = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
                img.save(root / folder / d / c / f"{i}.png")
    return root


def test_domainbed_layout_splits_and_labels(tmp_path):
    ds = open_dg_dataset("pacs", _pacs(tmp_path))
    assert ds.domain_names == list(PACS) and ds.classes == ["dog", "horse"]
    d = ds.domains[2]
    assert len(d) == 10 and list(d.labels) == [0] * 5 + [1] * 5
    assert all(p.parent.name == ds.classes[lab] for p, lab in zip(d.paths, d.labels, strict=True))
    a, b = d.split(0, 2)
    assert len(b) == 2 and len(a) == 8 and not set(a) & set(b) and sorted([*a, *b]) == list(range(10))
    assert np.array_equal(d.split(0, 2)[1], b)  # seeded: the same split every time
    assert any(not np.array_equal(d.split(s, 2)[1], b) for s in range(1, 6))  # and another for other seeds


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "PACS" / "sketch" / "dog").rename(r / "PACS" / "sketch" / "cat"), "class folders differ"),
    (lambda r: (r / "PACS" / "extra").mkdir(), "unexpected folders among the domains: extra"),
    (lambda r: ((r / "PACS" / "cartoon").rename(r / "c"), (r / "PACS" / "cartoon").write_text("x")),
     "missing domain folder(s) cartoon"),  # a file named like a domain is not the domain
    (lambda r: (r / "PACS" / "photo" / "readme.txt").write_text("x"), "files among the class folders"),
    (lambda r: __import__("shutil").rmtree(r / "PACS" / "cartoon"), "missing domain folder(s) cartoon"),
])
def test_domainbed_bad_layouts_are_named(tmp_path, damage, message):
    root = _pacs(tmp_path)
    damage(root)
    with pytest.raises(DataLayoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_dg_dataset("pacs", root)


def test_plain_files_beside_the_domains_are_ignored(tmp_path):
    """A real OfficeHome folder holds ImageInfo.csv and imagelist.txt next to its domain folders."""
    domains = ("Art", "Clipart", "Product", "Real World")
    root = _pacs(tmp_path, classes=("Alarm_Clock", "Bike"), per=2, domains=domains, folder="office_home")
    for name in ("ImageInfo.csv", "imagelist.txt", ".DS_Store"):
        (root / "office_home" / name).write_text("x")
    (root / "office_home" / ".cache").mkdir()  # hidden folders are not domains either
    ds = open_dg_dataset("office-home", root)
    assert ds.domain_names == list(domains) and ds.classes == ["Alarm_Clock", "Bike"]
    assert [len(d) for d in ds.domains] == [4, 4, 4, 4]
    (root / "office_home" / "Extra").mkdir()  # a stray folder still is an error
    with pytest.raises(DataLayoutError, match="unexpected folders among the domains: Extra"):
        open_dg_dataset("office-home", root)


def test_rotated_digits_domains_are_disjoint_rotations():
    ds = rotated_digits()
    assert ds.domain_names == ["0deg", "15deg", "30deg", "45deg", "60deg", "75deg"]
    assert sum(len(d) for d in ds.domains) == 1797
    assert all(295 <= len(d) <= 300 for d in ds.domains)
    first = ds.domains[0].arrays.astype(float)
    # the rotation is real: the 75-degree domain's mean image differs from the upright one
    assert np.abs(first.mean(0) - ds.domains[5].arrays.astype(float).mean(0)).mean() > 5
    with pytest.raises(UnknownNameError, match="no domain '90deg'"):
        ds.index("90deg")


def _nano(arch: str = "vmamba-nano"):
    torch.manual_seed(0)
    return get_spec(arch).build(10)


@pytest.mark.parametrize("arch", ["vmamba-nano", "vmamba-nano-v0"])
@pytest.mark.parametrize("name", ["start-m", "start-x", "mixstyle", "dsu", "dsu-ours"])
def test_algorithms_perturb_training_only_and_detach(name, arch):
    model = _nano(arch)
    x = torch.randn(6, 3, 32, 32)
    model.train()
    torch.manual_seed(1)
    plain = model(x)
    algo = get_algorithm(name)
    handle = algo.attach(model, {**algo.defaults, "start_p": 1.0, "p": 1.0})
    torch.manual_seed(1)
    perturbed = model(x)
    assert (perturbed - plain).abs().max() > 1e-4  # training forward changes
    model.eval()
    with torch.no_grad():
        a = model(x)
    handle.remove()
    with torch.no_grad():
        b = model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # inference: untouched (zero cost)
    model.train()
    torch.manual_seed(1)
    torch.testing.assert_close(model(x), plain)  # removed: plain training again


def test_start_needs_ssm_blocks_and_valid_stages():
    from mamba_bench.errors import MambaBenchError

    conv = get_spec("convnext-nano").build(10)
    with pytest.raises(MambaBenchError, match="needs a Mamba model"):
        get_algorithm("start-m").attach(conv, get_algorithm("start-m").defaults)
    with pytest.raises(MambaBenchError, match=r"stage\(s\) \[7\] do not exist"):
        get_algorithm("start-x").attach(_nano(), {**get_algorithm("start-x").defaults, "start_stages": [7]})
    with pytest.raises(UnknownNameError, match="valid: erm, start-m"):
        get_algorithm("coral")


def test_start_selects_the_most_salient_tokens():
    model = _nano()
    op = model.layers[0].blocks[0].op
    x = torch.randn(2, op.d_inner, 4, 4)
    x[:, :, 1, 2] *= 50  # one loud token
    sal_x = start_saliency(op, x, "x")
    sal_m = start_saliency(op, x, "m")
    assert sal_x.shape == sal_m.shape == (2, 16)
    assert (sal_x.argmax(1) == 6).all() and (sal_m.argmax(1) == 6).all()
    # the transform replaces only the top-ratio tokens
    from mamba_bench.dg.algorithms import start_transform

    torch.manual_seed(0)
    y = start_transform(op, x, "x", ratio=0.25, alpha=0.1)
    changed = (y - x).abs().amax(1) > 1e-6  # (b, h, w)
    assert changed.view(2, -1).sum(1).le(4).all() and changed[:, 1, 2].all()


def test_mix_style_with_lambda_zero_takes_the_partners_statistics(monkeypatch):
    x = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 2, 3]).view(1, 3, 1, 1) + 7
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self, shape: torch.zeros(shape))
    monkeypatch.setattr(torch, "randperm", lambda n, device=None: torch.arange(n).flip(0))
    y = mix_style(x, 0.1)
    torch.testing.assert_close(y.mean((2, 3)), x.flip(0).mean((2, 3)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y.std((2, 3)), x.flip(0).std((2, 3)), rtol=1e-3, atol=1e-3)


def test_train_cell_resume_is_exact(tmp_path):
    ds = rotated_digits()
    cfg = replace(TINY, algorithm="start-m")
    full = train_cell(cfg, ds, tmp_path / "a", device=torch.device("cpu"))

    class Stop(Exception):
        pass

    def stop_at_3(c, step, loss, rows):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train_cell(cfg, ds, tmp_path / "b", device=torch.device("cpu"), on_eval=stop_at_3)
    assert not (cfg.cell_dir(tmp_path / "b") / "last.pt").exists()
    resumed = train_cell(cfg, ds, tmp_path / "b", device=torch.device("cpu"))
    assert full["best_step"] == resumed["best_step"] and full["train_val"] == resumed["train_val"]
    from safetensors.torch import load_file

    a = load_file(cfg.cell_dir(tmp_path / "a") / "last.pt")
    b = load_file(cfg.cell_dir(tmp_path / "b") / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ev_a = json.loads((cfg.cell_dir(tmp_path / "a") / "evals.json").read_text())["evals"]
    ev_b = json.loads((cfg.cell_dir(tmp_path / "b") / "evals.json").read_text())["evals"]
    # DomainBed's evaluation points: after the first update, then every eval_every, and the last
    assert ev_a == ev_b and sorted({e["step"] for e in ev_a}) == [1, 3, 5, 6]
    # complete cells are skipped; a changed configuration in the same place is refused
    assert train_cell(cfg, ds, tmp_path / "a", device=torch.device("cpu"))["skipped"]
    from mamba_bench.errors import RunDirError

    with pytest.raises(RunDirError, match="another configuration"):
        train_cell(replace(cfg, lr=1e-3), ds, tmp_path / "a", device=torch.device("cpu"))


def test_a_cell_refused_before_its_first_step_does_not_bind_its_out(tmp_path):
    """A bad hyper-parameter is found after the cell's config.json is written; the corrected command must run."""
    from mamba_bench.errors import MambaBenchError

    ds = rotated_digits()
    cfg = replace(TINY, algorithm="start-m", steps=1, eval_every=1)
    with pytest.raises(MambaBenchError, match="start_ratio must be in"):
        train_cell(replace(cfg, hparams={"start_ratio": 5}), ds, tmp_path, device=torch.device("cpu"))
    assert (cfg.cell_dir(tmp_path) / "config.json").exists()
    done = train_cell(replace(cfg, hparams={"start_ratio": 0.3}), ds, tmp_path, device=torch.device("cpu"))
    assert done["best_step"] == 1 and (cfg.cell_dir(tmp_path) / "last.pt").exists()


def _crash_writing(monkeypatch, name: str):
    """safetensors' save_file writes half of ``name`` (its temporary file) and then dies."""
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(state, filename, metadata=None):
        if Path(filename).name.startswith(name):
            Path(filename).write_bytes(b"partial")
            raise OSError("disk full")
        return real(state, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    from mamba_bench.models.weights import checkpoint_metadata, save_checkpoint

    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(model, tmp_path / "best.pt", {"step": "1"})
    before = path.read_bytes()
    _crash_writing(monkeypatch, "best.pt")
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(torch.nn.Linear(2, 2), path, {"step": "2"})
    assert path.read_bytes() == before and checkpoint_metadata(path)["step"] == "1"  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no partial temporary file left


def test_crash_between_state_and_best_is_repaired_on_resume(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from mamba_bench.models.weights import checkpoint_metadata

    ds = rotated_digits()
    cfg = replace(TINY, steps=1)
    cell = cfg.cell_dir(tmp_path)
    with monkeypatch.context() as m:
        _crash_writing(m, "best.pt")
        with pytest.raises(OSError, match="disk full"):
            train_cell(cfg, ds, tmp_path, device=torch.device("cpu"))
    # state.pt is written first, best.pt after it: the crash left the state and no (partial) best.pt
    assert sorted(p.name for p in cell.iterdir()) == ["config.json", "state.pt"]
    res = train_cell(cfg, ds, tmp_path, device=torch.device("cpu"))
    assert res["best_step"] == 1 and checkpoint_metadata(cell / "best.pt")["step"] == "1"
    best, last = load_file(cell / "best.pt"), load_file(cell / "last.pt")
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)


def test_checkpoint_carries_its_config_and_loads_as_start_model(tmp_path):
    ds = rotated_digits()
    cfg = replace(TINY, algorithm="start-x", steps=2)
    train_cell(cfg, ds, tmp_path, device=torch.device("cpu"))
    best = cfg.cell_dir(tmp_path) / "best.pt"
    from mamba_bench.models.weights import checkpoint_metadata

    md = checkpoint_metadata(best)
    assert md["arch"] == "vmamba-nano" and md["algorithm"] == "start-x" and md["seed"] == "0"
    assert json.loads(md["split"])["75deg"] == {"in": 240, "out": 59}  # 299 images, 20 % out
    assert json.loads(md["classes"]) == [str(i) for i in range(10)]
    model = create_model("start-x", weights=str(best))
    assert model.classifier.head.out_features == 10
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    from mamba_bench.errors import CheckpointError

    with pytest.raises(CheckpointError, match="trained with start-x, not start-m"):
        create_model("start-m", weights=str(best))
    with pytest.raises(CheckpointError, match="needs a dg-train checkpoint"):
        create_model("start-m")


def test_dg_checkpoint_is_evaluated_with_its_training_preprocessing(tmp_path):
    """dg-train stretches whole images to a square; predict and corrupt must feed its checkpoints the same."""
    from mamba_bench.data import eval_preprocess, load_image_rgb, open_dataset
    from mamba_bench.dg.train import ImageSource, _normalise
    from mamba_bench.errors import MambaBenchError
    from mamba_bench.eval.corrupt import load_models, match_preprocessing
    from mamba_bench.eval.predict import predict_images
    from mamba_bench.models.preprocess import image_for_spec
    from mamba_bench.models.registry import spec_for_weights
    from mamba_bench.models.weights import checkpoint_metadata

    root = _pacs(tmp_path / "data", per=2)  # 24 x 20 images: a center crop loses their sides
    ds = open_dg_dataset("pacs", root)
    cfg = replace(TINY, dataset="pacs", test_domain="sketch", steps=1, eval_every=1, batch_size=2)
    train_cell(cfg, ds, tmp_path / "run", device=torch.device("cpu"))
    best = str(cfg.cell_dir(tmp_path / "run") / "best.pt")
    md = checkpoint_metadata(best)
    assert (md["resize_mode"], md["interpolation"]) == ("stretch", "bilinear")
    spec = spec_for_weights(get_spec("vmamba-nano"), best)
    assert (spec.resize_mode, spec.interpolation, spec.input_size) == ("stretch", "bilinear", 32)

    source = ImageSource(32)  # what training feeds the model (augment none: nothing random)
    photo = ds.domains[ds.index("photo")]
    train_px = {p.resolve(): source._one(photo, i) for i, p in enumerate(photo.paths)}
    for p, px in train_px.items():
        img = load_image_rgb(p)
        assert np.array_equal(image_for_spec(img, spec), px)
        assert not np.array_equal(eval_preprocess(img, 32, 32), px)  # the former resize + center crop

    # corrupt: the clean images of the run are the training pixels
    imgset = open_dataset(str(root / "PACS" / "photo"))
    models = load_models(["vmamba-nano"], [best], imgset.num_classes, random_init=False, cache_dir=None,
                         dataset=imgset.name)
    assert match_preprocessing(imgset, models) == {"resize_mode": "stretch", "image_size": 32,
                                                   "interpolation": "bilinear"}
    assert len(imgset) == 4 and all(np.array_equal(imgset.load(i), train_px[s.path.resolve()])
                                    for i, s in enumerate(imgset.samples))
    mixed = load_models(["vmamba-nano", "convnext-nano"], [best, None], 2, random_init=True, cache_dir=None,
                        dataset=imgset.name)
    with pytest.raises(MambaBenchError, match="stretched to a square .* run them separately"):
        match_preprocessing(open_dataset(str(root / "PACS" / "photo")), mixed)

    # predict: the logits of the training pixels
    res, errors = predict_images("vmamba-nano", [str(photo.paths[0])], weights=best, topk=2, device="cpu")
    model = create_model("vmamba-nano", weights=best)
    with torch.no_grad():
        logits = model(_normalise(source.batch(photo, np.array([0])), spec.mean, spec.std))[0]
    assert not errors
    got = {t["index"]: t["logit"] for t in res[0]["topk"]}
    assert got == pytest.approx({i: float(v) for i, v in enumerate(logits)}, abs=1e-5)


def test_selection_methods():
    ev = []
    for step, (src, tgt_out, tgt_in) in {1: (50, 90, 91), 2: (80, 60, 61), 3: (70, 70, 71)}.items():
        ev += [{"step": step, "domain": "a", "split": "out", "accuracy": src, "n": 1},
               {"step": step, "domain": "t", "split": "out", "accuracy": tgt_out, "n": 1},
               {"step": step, "domain": "t", "split": "in", "accuracy": tgt_in, "n": 1}]
    assert select_step(ev, "t", "training-domain") == 2  # early stopping on the source domains' out splits
    # DomainBed's oracle takes the last checkpoint: the test domain's out split (best at step 1
    # here) must not early-stop the run
    assert select_step(ev, "t", "oracle") == 3
    assert select_step(ev, "t", "last") == 3


def test_oracle_rows_of_dg_results_are_the_last_step(tmp_path):
    from mamba_bench.dg.run import results_frame

    cell = TINY.cell_dir(tmp_path)
    cell.mkdir(parents=True)
    (cell / "config.json").write_text(json.dumps({"config": asdict(TINY), "fingerprint": "x"}))
    ev = [{"step": s, "domain": d, "split": sp, "accuracy": acc, "n": 1}
          for s, tgt in ((2, 90.0), (4, 40.0)) for d, sp, acc in
          (("0deg", "out", 50.0 + s), ("75deg", "out", tgt), ("75deg", "in", tgt + 1))]
    (cell / "evals.json").write_text(json.dumps({"summary": {}, "evals": ev}))
    df, _ = results_frame(tmp_path)
    oracle = df[(df.selection == "oracle") & df.is_test & (df.split == "in")]
    assert list(oracle.step) == [4] and list(oracle.accuracy) == [41.0]


def _headline_rows(cells):
    return pd.DataFrame([{"dataset": "d", "algorithm": algo, "test_domain": dom, "seed": seed,
                          "selection": "training-domain", "step": 1, "eval_domain": dom, "split": "in",
                          "is_test": True, "accuracy": acc, "n": 10} for algo, dom, seed, acc in cells])


def test_summary_avg_counts_only_seeds_complete_for_every_domain():
    df = _headline_rows([("erm", "A", 0, 80.0), ("erm", "B", 0, 60.0),  # seed 0: both domains, mean 70
                         ("erm", "A", 1, 90.0),                          # seed 1: B not finished yet
                         ("dsu", "A", 0, 50.0)])                         # no complete seed at all
    header, body = summary_table(df)
    assert header == ["algorithm", "A", "B", "Avg"]
    rows = {r[0]: r for r in body}
    # DomainBed's error bar: population std (5.00) / sqrt(2 seeds)
    assert rows["erm"][1] == "85.00 ± 3.54" and rows["erm"][2] == "60.00"
    assert {r[0]: r for r in summary_table(df, error="std")[1]}["erm"][1] == "85.00 ± 5.00"
    assert rows["erm"][3] == "70.00"  # seed 1 (A only) would pull it to 80.00 ± 10.00
    assert rows["dsu"][1:] == ["50.00", "—", "—"]


def test_mmd_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(80, 5, generator=g), torch.randn(80, 5, generator=g)
    assert mmd_rbf(a, b) < 0.15 < mmd_rbf(a, b + 1.5)


def test_dg_train_and_eval_cli(tmp_path, cli):
    out = tmp_path / "run"
    args = ["dg-train", "--dataset", "rotated-digits", "--algorithm", "erm", "--algorithm", "mixstyle",
            "--test-domain", "75deg", "--seeds", "0,1", "--steps", "2", "--batch-size", "4", "--image-size", "32",
            "--eval-every", "2", "--out", str(out), "--device", "cpu"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "4 cell(s)" in " ".join(r.stdout.split())
    r = cli(*args)
    assert r.returncode == 0 and "(4 already complete)" in " ".join(r.stdout.split())
    r = cli("dg-eval", str(out), "--gap", "--gap-samples", "20", "--format", "json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    df = pd.read_parquet(out / "dg_results.parquet")
    assert {"algorithm", "test_domain", "seed", "selection", "accuracy", "eval_domain"} <= set(df.columns)
    assert set(df.algorithm) == {"erm", "mixstyle"} and set(df.seed) == {0, 1}
    assert len(df) == 2 * 2 * 3 * 6 * 2  # algorithms × seeds × selections × eval domains × splits
    head = df[(df.selection == "training-domain") & df.is_test & (df.split == "in")]
    erm = head[head.algorithm == "erm"].accuracy
    row = next(t for t in res["table"] if t["algorithm"] == "erm")
    assert res["error_bar"] == "sem"  # DomainBed's standard error over seeds by default
    assert row["75deg"] == f"{erm.mean():.2f} ± {erm.std(ddof=0) / np.sqrt(2):.2f}"
    r = cli("dg-eval", str(out), "--format", "json", "--error-bar", "std")
    row = next(t for t in json.loads(r.stdout)["table"] if t["algorithm"] == "erm")
    assert row["75deg"] == f"{erm.mean():.2f} ± {erm.std(ddof=0):.2f}"
    r = cli("dg-eval", str(out), "--error-bar", "ci")
    assert r.returncode == 2 and "unknown --error-bar 'ci'; valid: sem, std" in r.stderr
    gap = pd.read_parquet(out / "dg_gap.parquet")
    assert len(gap) == 4 and np.isfinite(gap[["delta", "B", "C", "feat"]].to_numpy()).all()
    assert (out / "dg_results.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--dataset", "pacs"], "--data-root is needed for pacs"),
    (["--dataset", "rotated-digits", "--test-domain", "90deg"], "no domain '90deg'"),
    (["--dataset", "rotated-digits", "--algorithm", "coral"], "unknown DG algorithm 'coral'"),
    (["--dataset", "mnist"], "unknown DG data set 'mnist'"),
    (["--dataset", "rotated-digits", "--seeds", "a"], "--seeds takes integers"),
    (["--dataset", "rotated-digits", "--hparam", "start_ratio"], "KEY=VALUE"),
    (["--dataset", "rotated-digits", "--steps", "0"], "--steps must be positive"),
    (["--dataset", "rotated-digits", "--algorithm", "start-m", "--hparam", "start_rate=0.3"],
     "--hparam 'start_rate' is not a hyper-parameter of start-m; valid keys: alpha, start_p, start_ratio, "
     "start_softmax, start_stages, start_tokens"),
    (["--dataset", "rotated-digits", "--algorithm", "erm", "--hparam", "p=0.3"],
     "--hparam 'p' is not a hyper-parameter of erm; they take none"),
    (["--dataset", "rotated-digits", "--init", "start-m"], "--init start-m is a dg-train result"),
    (["--dataset", "rotated-digits", "--init", "start-x", "--weights", "x.pt"], "--init start-x is a dg-train result"),
])
def test_dg_train_bad_input(tmp_path, cli, args, message):
    r = cli("dg-train", *args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_hparam_keys_of_any_chosen_algorithm_are_accepted():
    from mamba_bench.dg.run import check_hparams
    from mamba_bench.errors import MambaBenchError

    check_hparams({"start_ratio": 0.3, "p": 0.2}, ["erm", "start-x", "mixstyle"])  # each key known to one
    with pytest.raises(MambaBenchError, match="'mix_stages' is not a hyper-parameter of erm, start-x"):
        check_hparams({"start_ratio": 0.3, "mix_stages": [0]}, ["erm", "start-x"])


def test_dg_train_bad_layout_and_eval_of_a_non_run(tmp_path, cli):
    root = _pacs(tmp_path / "data")
    (root / "PACS" / "stray").mkdir()
    r = cli("dg-train", "--dataset", "pacs", "--data-root", str(root), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unexpected folders among the domains: stray" in r.stderr
    r = cli("dg-eval", str(tmp_path))
    assert r.returncode == 2 and "not a dg-train run" in r.stderr


def test_dg_eval_lists_cells_in_progress(tmp_path):
    ds = rotated_digits()
    train_cell(replace(TINY, steps=2), ds, tmp_path, device=torch.device("cpu"))
    pending = replace(TINY, steps=2, seed=1).cell_dir(tmp_path)
    pending.mkdir(parents=True)
    (pending / "config.json").write_text(json.dumps({"config": {}, "fingerprint": "x"}))
    (tmp_path / "dg_run.json").write_text(json.dumps({"dataset": "rotated-digits"}))
    res = dg_eval(tmp_path)
    assert res["pending"] == ["erm/75deg/seed1"]
    header, body = summary_table(res["frame"])
    assert header == ["algorithm", "75deg", "Avg"] and body[0][0] == "erm"


def test_algorithm_registry_complete():
    assert ALGORITHMS == ("erm", "start-m", "start-x", "mixstyle", "dsu", "dsu-ours")


def test_pretrained_init_on_disk_domains(tmp_path, cli):
    """--init with --weights: the backbone loads the official-format file strictly, the head is new."""
    torch.manual_seed(3)
    src = get_spec("vmamba-nano").build(10)
    torch.save({"model": src.state_dict()}, tmp_path / "nano.pth")
    root = _pacs(tmp_path / "data", per=3)
    out = tmp_path / "pacs"
    r = cli("dg-train", "--dataset", "pacs", "--data-root", str(root), "--test-domain", "sketch",
            "--init", "vmamba-nano", "--weights", str(tmp_path / "nano.pth"), "--steps", "1", "--batch-size", "2",
            "--image-size", "32", "--lr", "1e-12", "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file

    trained = load_file(out / "erm" / "sketch" / "seed0" / "last.pt")
    assert trained["classifier.head.weight"].shape == (2, src.num_features)  # PACS fixture: dog, horse
    body = {k: v for k, v in src.state_dict().items() if not k.startswith("classifier.head")}
    # lr 1e-12: one step leaves the loaded backbone as it was (to float rounding)
    assert all(torch.allclose(trained[k], v, atol=1e-6) for k, v in body.items())
    r = cli("predict", "--model", "vmamba-nano", "--weights", str(out / "erm" / "sketch" / "seed0" / "best.pt"),
            str(root / "PACS" / "photo" / "dog" / "0.png"), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["topk"][0]["label"] in ("dog", "horse")
