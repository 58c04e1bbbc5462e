"""``dg-train`` over algorithms × test domains × seeds, and ``dg-eval`` of a run directory."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mamba_bench.dg.algorithms import get_algorithm
from mamba_bench.dg.data import SPLIT_PROTOCOLS, open_dg_dataset
from mamba_bench.dg.recipes import get_recipe
from mamba_bench.dg.train import AUGMENTS, CHECKPOINT_KIND, DGTrainConfig, ImageSource, _normalise, train_cell
from mamba_bench.errors import DataLayoutError, MambaBenchError, RunDirError, UnknownNameError
from mamba_bench.results.store import atomic_write_json, atomic_write_parquet

SELECTIONS = ("training-domain", "oracle", "last")
RESULT_COLUMNS = ["dataset", "algorithm", "test_domain", "seed", "selection", "step", "eval_domain", "split",
                  "is_test", "accuracy", "n"]


def dg_train(*, dataset: str, data_root: str | None, algorithms: list[str], test_domains: list[str] | None,
             seeds: list[int], base: DGTrainConfig, out: Path, device: torch.device, threads: int = 8,
             cache_dir: str | None = None, on_cell=None, on_eval=None) -> list[dict]:
    for a in algorithms:
        get_algorithm(a)  # every name checked before any work
    check_hparams(base.hparams, algorithms)
    get_recipe(base.recipe)
    if base.protocol not in SPLIT_PROTOCOLS:
        raise UnknownNameError(f"unknown --protocol {base.protocol!r}; valid: {', '.join(SPLIT_PROTOCOLS)}")
    if base.augment not in AUGMENTS:
        raise UnknownNameError(f"unknown --augment {base.augment!r}; valid: {', '.join(AUGMENTS)}")
    from mamba_bench.models.registry import get_spec

    if get_spec(base.init).family == "dg":
        raise MambaBenchError(f"--init {base.init} is a dg-train result, not an architecture to start from: "
                              f"use --init vmamba-nano (or another registry model) with --algorithm {base.init}")
    ds = open_dg_dataset(dataset, data_root)
    domains = test_domains or ds.domain_names
    for d in domains:
        ds.index(d)
    if len(ds.domains) < 2:
        raise DataLayoutError(f"{dataset} needs at least two domains")
    out = Path(out)
    meta_path = out / "dg_run.json"
    meta = {"dataset": dataset, "data_root": data_root, "domains": ds.domain_names, "classes": ds.classes}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("dataset") != dataset or old.get("classes") != ds.classes:
            raise RunDirError(f"{out} holds a DG run on {old.get('dataset')}; use another --out")
    atomic_write_json(meta_path, meta)
    results = []
    for algorithm in algorithms:
        for test_domain in domains:
            for seed in seeds:
                cfg = replace(base, dataset=dataset, algorithm=algorithm, test_domain=test_domain, seed=seed)
                if on_cell is not None:
                    on_cell(cfg)
                results.append(train_cell(cfg, ds, out, device=device, threads=threads, cache_dir=cache_dir,
                                          on_eval=on_eval))
    return results


def check_hparams(hparams: dict, algorithms: list[str]) -> None:
    """Every ``--hparam`` key must be a hyper-parameter of at least one of ``algorithms``.

    Each cell merges the keys into its algorithm's defaults, where a misspelt key (or one that no
    chosen algorithm has) would otherwise be silently ignored.
    """
    valid = sorted({k for a in algorithms for k in get_algorithm(a).defaults})
    unknown = [k for k in hparams if k not in valid]
    if unknown:
        raise MambaBenchError(f"--hparam {unknown[0]!r} is not a hyper-parameter of {', '.join(algorithms)}; "
                              + (f"valid keys: {', '.join(valid)}" if valid else "they take none"))


def _cells(run: Path) -> tuple[list[tuple[dict, dict]], list[str]]:
    done, pending = [], []
    for conf_path in sorted(run.glob("*/*/seed*/config.json")):
        cell = conf_path.parent
        try:
            conf = json.loads(conf_path.read_text())["config"]
        except (OSError, ValueError, KeyError):
            raise MambaBenchError(f"{conf_path} is not a dg-train config (corrupt file?)") from None
        evals = cell / "evals.json"
        if not evals.exists():
            pending.append(str(cell.relative_to(run)))
            continue
        try:
            done.append((conf, json.loads(evals.read_text())))
        except ValueError:
            raise MambaBenchError(f"{evals} is not valid JSON (corrupt file?)") from None
    return done, pending


def select_step(evals: list[dict], test_domain: str, selection: str) -> int:
    """The evaluation step whose accuracies a cell reports under ``selection``, as DomainBed's
    ``model_selection.py`` chooses within one run (one hyper-parameter setting):

    * ``training-domain`` (``IIDAccuracySelectionMethod``): the step with the best mean accuracy on
      the ``out`` splits of the training domains, i.e. early stopping on source validation data;
    * ``oracle`` (``OracleSelectionMethod``, test-domain validation): the **last** checkpoint. The
      test domain's ``out`` split may only choose between hyper-parameter settings, each judged at
      its final step; early stopping on the test domain is not allowed. A cell has one setting, so
      its oracle step is its last step; the test-domain ``out`` accuracy there is the oracle's
      validation score;
    * ``last``: the last checkpoint.
    """
    steps = sorted({e["step"] for e in evals})
    if selection not in SELECTIONS:
        raise MambaBenchError(f"unknown selection {selection!r}; valid: {', '.join(SELECTIONS)}")
    if selection in ("oracle", "last"):
        return steps[-1]
    best, best_step = -1.0, steps[-1]
    for s in steps:
        rows = [e for e in evals if e["step"] == s]
        score = float(np.mean([e["accuracy"] for e in rows if e["domain"] != test_domain and e["split"] == "out"]))
        if score > best:
            best, best_step = score, s
    return best_step


def results_frame(run: Path) -> tuple[pd.DataFrame, list[str]]:
    done, pending = _cells(run)
    rows = []
    for conf, ev in done:
        for selection in SELECTIONS:
            step = select_step(ev["evals"], conf["test_domain"], selection)
            for e in ev["evals"]:
                if e["step"] != step:
                    continue
                rows.append({"dataset": conf["dataset"], "algorithm": conf["algorithm"],
                             "test_domain": conf["test_domain"], "seed": conf["seed"], "selection": selection,
                             "step": step, "eval_domain": e["domain"], "split": e["split"],
                             "is_test": e["domain"] == conf["test_domain"], "accuracy": e["accuracy"], "n": e["n"]})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), pending


def headline(df: pd.DataFrame, selection: str = "training-domain") -> pd.DataFrame:
    """Test-domain accuracy per algorithm × test domain × seed: its ``in`` split, as DomainBed reports
    (the whole test domain, split ``all``, under the ``dgmamba`` protocol)."""
    t = df[(df.selection == selection) & df.is_test & df.split.isin(["in", "all"])]
    return t[["algorithm", "test_domain", "seed", "accuracy"]].reset_index(drop=True)


ERROR_BARS = {
    "sem": "standard error over seeds",  # DomainBed's collect_results.format_mean
    "std": "std over seeds (population)",
}


def error_bar(v, kind: str = "sem") -> float:
    """The spread of per-seed values ``v``: ``sem`` is DomainBed's ``collect_results.format_mean``,
    ``np.std(data / sqrt(n))`` = population std (ddof 0) / sqrt(n); ``std`` the population std."""
    if kind not in ERROR_BARS:
        raise MambaBenchError(f"unknown --error-bar {kind!r}; valid: {', '.join(ERROR_BARS)}")
    v = np.asarray(v, float)
    sd = float(np.std(v, ddof=0))
    return sd / np.sqrt(len(v)) if kind == "sem" else sd


def summary_table(df: pd.DataFrame, selection: str = "training-domain", error: str = "sem"
                  ) -> tuple[list[str], list[list[str]]]:
    """Rows per algorithm: mean ± ``error`` over seeds per test domain, and Avg (mean ± ``error`` of the
    per-seed averages, DomainBed's "Averages" table; its per-data-set table prints the same mean).

    Avg averages each seed over every test domain of the table, so only seeds that are complete for
    all of them count: a seed still missing a domain would average over a different set of domains
    and bias the mean. An algorithm without a complete seed gets "—".
    """
    error_bar([0.0], error)  # the name checked before any work
    h = headline(df, selection)
    domains = list(dict.fromkeys(h.test_domain))
    header = ["algorithm", *domains, "Avg"]
    body = []
    for algo in dict.fromkeys(h.algorithm):
        a = h[h.algorithm == algo]
        cells = []
        for d in domains:
            v = a[a.test_domain == d].accuracy
            cells.append(_pm(v, error) if len(v) else "—")
        complete = a.groupby("seed").filter(lambda g: set(g.test_domain) == set(domains))
        per_seed = complete.groupby("seed").accuracy.mean()
        body.append([algo, *cells, _pm(per_seed, error) if len(per_seed) else "—"])
    return header, body


def _pm(v, error: str = "sem") -> str:
    v = np.asarray(v, float)
    return f"{v.mean():.2f} ± {error_bar(v, error):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def plot_results(df: pd.DataFrame, path: Path) -> Path | None:
    h = headline(df)
    if h.empty:
        return None
    from mamba_bench.results.plots import plt, save_figure  # Agg backend, atomic PNG writes

    domains = list(dict.fromkeys(h.test_domain))
    algos = list(dict.fromkeys(h.algorithm))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(domains) * max(1, len(algos)) / 3, 3.6))
    width = 0.8 / len(algos)
    for k, algo in enumerate(algos):
        a = h[h.algorithm == algo]
        means = [a[a.test_domain == d].accuracy.mean() for d in domains]
        errs = [error_bar(a[a.test_domain == d].accuracy) for d in domains]
        ax.bar(np.arange(len(domains)) + k * width - 0.4 + width / 2, means, width, yerr=errs, label=algo, capsize=2)
    ax.set_xticks(np.arange(len(domains)), domains, rotation=20)
    ax.set_ylabel("test-domain top-1 (%)")
    ax.set_title("leave-one-domain-out, training-domain validation (mean ± standard error over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def dg_eval(run: Path, *, gap: bool = False, data_root: str | None = None, gap_samples: int = 100,
            device: torch.device | None = None) -> dict:
    run = Path(run)
    if not run.is_dir():
        raise MambaBenchError(f"{run} is not a directory")
    meta_path = run / "dg_run.json"
    if not meta_path.exists():
        raise MambaBenchError(f"{run} is not a dg-train run (no dg_run.json)")
    meta = json.loads(meta_path.read_text())
    df, pending = results_frame(run)
    if df.empty:
        raise MambaBenchError(f"{run} has no finished cell yet" + (f" ({len(pending)} in progress)" if pending else ""))
    atomic_write_parquet(run / "dg_results.parquet", df)
    plot = plot_results(df, run / "dg_results.png")
    res = {"results": str(run / "dg_results.parquet"), "plot": str(plot) if plot else None, "pending": pending,
           "frame": df}
    if gap:
        res["gap"] = gap_frame(run, meta, data_root or meta.get("data_root"), gap_samples,
                               device or torch.device("cpu"))
        atomic_write_parquet(run / "dg_gap.parquet", res["gap"])
    return res


def gap_frame(run: Path, meta: dict, data_root: str | None, samples: int, device: torch.device) -> pd.DataFrame:
    from mamba_bench.dg.gap import domain_gap
    from mamba_bench.models.vmamba import VMamba
    from mamba_bench.models.weights import checkpoint_metadata, load_weights_into

    ds = open_dg_dataset(meta["dataset"], data_root)
    rows = []
    done, _ = _cells(run)
    for conf, _ev in done:
        cell = run / conf["algorithm"] / conf["test_domain"] / f"seed{conf['seed']}"
        ckpt = cell / "best.pt"
        md = checkpoint_metadata(ckpt)
        if md.get("kind") != CHECKPOINT_KIND:
            raise MambaBenchError(f"{ckpt} is not a dg-train checkpoint")
        from mamba_bench.models.registry import get_spec

        model = get_spec(md["arch"]).build(int(md["num_classes"]))
        if not isinstance(model, VMamba):
            raise MambaBenchError(f"--gap needs VMamba checkpoints; {ckpt} is a {md['arch']}")
        load_weights_into(model, str(ckpt))
        model.to(device).eval()
        size = int(md["image_size"])
        mean, std = json.loads(md["mean"]), json.loads(md["std"])
        source = ImageSource(size)

        def load(d, idx, source=source, mean=mean, std=std):
            return _normalise(source.batch(d, idx).to(device), mean, std)

        g = domain_gap(model, ds, conf["test_domain"], int(conf["seed"]), load, samples,
                       conf.get("protocol", "ours"))
        source.pool.shutdown()
        rows.append({"algorithm": conf["algorithm"], "test_domain": conf["test_domain"], "seed": conf["seed"],
                     "delta": g["delta"], "B": g["B"], "C": g["C"], "feat": g["feat"]})
    return pd.DataFrame(rows, columns=["algorithm", "test_domain", "seed", "delta", "B", "C", "feat"])
