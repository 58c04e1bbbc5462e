"""``report``: run directories → ``report.md`` and one self-contained ``report.html``.

The HTML has no scripts and no external resources: plots are embedded as base64 PNGs, the CSS is
inline and fluid (tables scroll sideways on a phone). Every user-supplied string — model names,
paths, class and domain names, command lines — goes through ``html.escape`` (HTML) or a Markdown
escape. The report directory also keeps each corruption run's tables under ``data/<run>/`` and an
index ``report.json``, so it can be the baseline of ``mamba-bench compare`` later.
"""

from __future__ import annotations

import base64
import html
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mamba_bench.errors import MambaBenchError
from mamba_bench.report.runs import Run, load_run
from mamba_bench.results.store import atomic_write_bytes, atomic_write_json

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:12px;line-height:1.45;color:#1b1b1b}h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ddd}
h3{font-size:1.05em}.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}table{border-collapse:collapse;
font-size:.85em;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}
code{background:#f5f5f5;padding:1px 3px;word-break:break-all}.meta{font-size:.85em;color:#444}"""


class _Doc:
    """Builds the Markdown and the HTML side by side from the same calls."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {_md(text)}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(_md(text) + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def meta(self, items: list[tuple[str, object]]) -> None:
        self.md += [f"- {_md(k)}: `{_code(v)}`" for k, v in items] + [""]
        self.html.append("<ul class=meta>" + "".join(
            f"<li>{html.escape(k)}: <code>{html.escape(str(v))}</code></li>" for k, v in items) + "</ul>")

    def table(self, df: pd.DataFrame, floatfmt: str = "{:.2f}") -> None:
        cols = [str(c) for c in df.columns]
        cells = [[_cell(v, floatfmt) for v in row] for row in df.itertuples(index=False)]
        self.md += ["| " + " | ".join(_md(c) for c in cols) + " |", "|" + "---|" * len(cols)]
        self.md += ["| " + " | ".join(_md(v) for v in r) + " |" for r in cells] + [""]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in cells)
        self.html.append(f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")

    def image(self, path: Path, alt: str, rel: str) -> None:
        data = base64.b64encode(path.read_bytes()).decode()
        self.md.append(f"![{_md(alt)}]({rel})\n")
        self.html.append(f'<p><img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}"></p>')


def _cell(v: object, floatfmt: str) -> str:
    """A table cell: a missing value (None, NaN, pd.NA — e.g. top-5 of a ≤ 5-class set) is "—"."""
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return "—"
    if isinstance(v, (float, np.floating)):
        return floatfmt.format(float(v))
    return str(v)


def _md(text: object) -> str:
    s = str(text)
    for ch in "\\`*_[]<>|#":
        s = s.replace(ch, "\\" + ch)
    return s


def _code(v: object) -> str:
    return str(v).replace("`", "'")


def _data_line(man: dict) -> str:
    """The manifest's data section: one data set (``data``) or several (``datasets``, a list)."""
    entries = man.get("datasets")
    if not isinstance(entries, list) or not entries:
        data = man.get("data")
        entries = data if isinstance(data, list) else [data if isinstance(data, dict) else {}]
    return "; ".join(f"{d.get('name')} ({d.get('usable')} images, {d.get('num_classes')} classes)"
                     for d in entries if isinstance(d, dict))


def _corrupt_section(doc: _Doc, run: Run, out: Path) -> None:
    from mamba_bench.report import tables
    from mamba_bench.results.plots import file_tags, write_heatmap

    man, m = run.manifest, run.tables["metrics"]
    doc.meta([("path", run.path), ("command", " ".join(map(str, man.get("command", [])))),
              ("data", _data_line(man)),
              ("suite", (man.get("suite") or {}).get("name")), ("seed", man.get("seed")),
              ("precision", _precision(man)),
              ("models", ", ".join(x["name"] for x in man.get("models", []))), ("git", man.get("git_commit"))])
    every = tables.datasets(m)
    several = len(every) > 1
    # several data sets: one section per data set with corruptions (clean-only sets: the shift table)
    shown = tables.corrupted_datasets(m) if several else every
    level = 4 if several else 3
    tags = file_tags(shown)
    for dataset in shown:
        if several:
            doc.heading(3, f"Data set {dataset}")
        dm = m[m.dataset == dataset]
        if (dm.corruption != "clean").any():
            rel = f"plots/{run.name}-heatmap" + (f"-{tags[dataset]}" if len(shown) > 1 else "") + ".png"
            (out / "plots").mkdir(parents=True, exist_ok=True)
            write_heatmap(dm, out / rel, tables.models(dm), f"Top-1 (%) per model and corruption — {dataset}")
            doc.heading(level, "Top-1 (%) heat-map: models × corruptions (mean over severities)")
            doc.image(out / rel, f"{run.name}: top-1 heat-map of {dataset}", rel)
        doc.heading(level, "Top-1 (%) per corruption, mean over severities")
        doc.table(tables.per_corruption(m, dataset))
        sev = tables.per_severity(m, dataset)
        if len(sev):
            doc.heading(level, "Top-1 (%) per severity, mean over corruptions")
            doc.table(sev)
            if sev.severity.str.startswith("severity-free").any():
                doc.para("The severity-free corruptions (recorded with severity 0) are not a severity: their "
                         "mean is the last row. Clean images are in the table above.")
        s = run.tables["summary"]
        if len(s) and "dataset" in s.columns and (s.dataset == dataset).any():
            agg, base = tables.summary_means(s, dataset)
            if "mCE" in agg.columns:
                doc.heading(level, f"mCE and relative mCE (baseline {base or 'unnamed'})")
            else:
                doc.heading(level, "Mean corrupted top-1 (%) (no --baseline: no mCE)")
            doc.table(agg)
    shift, main, why = tables.natural_shifts(m)
    if shift is not None:
        doc.heading(3, "Natural shifts: top-1 (%) on each data set" + (f" vs clean {main}" if main else ""))
        doc.table(shift)
        doc.para(f"Δ: top-1 on the set minus clean top-1 on {main} (points)." if main else
                 f"{why}: no drop is computed.")
    _plots(doc, run, out)


def _precision(man: dict) -> str:
    amp = (man.get("execution") or {}).get("amp")
    return "not recorded" if amp is None else ("bf16 autocast" if amp else "fp32")


def _dg_section(doc: _Doc, run: Run, out: Path) -> None:
    from mamba_bench.dg.run import summary_table

    man = run.manifest
    doc.meta([("path", run.path), ("data set", man.get("dataset")), ("domains", ", ".join(man.get("domains", [])))])
    for selection in ("training-domain", "oracle"):
        header, body = summary_table(run.tables["dg"], selection)
        doc.heading(3, f"Test-domain top-1 (%), {selection} selection, mean ± standard error over seeds")
        doc.table(pd.DataFrame(body, columns=header))
    if "gap" in run.tables:
        g = run.tables["gap"].groupby("algorithm", sort=False)[["delta", "B", "C", "feat"]].mean().reset_index()
        doc.heading(3, "Domain gap (MMD, lower is better)")
        doc.table(g.rename(columns={"delta": "Δ", "feat": "Feat."}), "{:.3f}")
    if man.get("pending"):
        doc.para("In progress, not in the tables: " + ", ".join(man["pending"]))
    _plots(doc, run, out)


def _finetune_section(doc: _Doc, run: Run, out: Path) -> None:
    df = run.tables["finetune"]
    doc.meta([("path", run.path)])
    last = df.sort_values("step").groupby("mode", sort=False).tail(1)
    doc.heading(3, "Final evaluation per regime")
    doc.table(last[["mode", "step", "dice", "iou", "val_loss", "sec_per_iter", "trainable_params"]], "{:.3f}")
    _plots(doc, run, out)


def _explain_section(doc: _Doc, run: Run, out: Path) -> None:
    man = run.manifest
    cfg = man.get("config", {})
    doc.meta([("path", run.path), ("model", man.get("model", {}).get("name")),
              ("weights", man.get("model", {}).get("weights")), ("data", man.get("data", {}).get("root")),
              ("images", man.get("data", {}).get("images")), ("masks", man.get("data", {}).get("masks")),
              ("corruption", f"{cfg.get('corruption')} severity {cfg.get('severity')}" if cfg.get("corruption")
               else "none (clean images)"), ("flipped right → wrong", man.get("flipped")),
              ("Mender definition", _definition(cfg))])
    sc = run.tables["scores"]
    wide = sc[sc.group != "all"].pivot_table(index=["index", "block", "state"], columns="group",
                                             values=["ecs", "ics"], sort=False)
    wide.columns = [f"{m.upper()} {g}" for m, g in wide.columns]
    wide = wide.reset_index().drop(columns="index")
    doc.heading(3, "Mender scores per block and state (simple vs difficult images)")
    doc.table(wide[["block", "state"] + [c for c in ("ECS simple", "ECS difficult", "ICS simple", "ICS difficult")
                                         if c in wide.columns]], "{:.4f}")
    _plots(doc, run, out)


def _repair_section(doc: _Doc, run: Run, out: Path) -> None:
    man = run.manifest
    cfg = man.get("config", {})
    doc.meta([("path", run.path), ("model", cfg.get("model")), ("repaired blocks", ", ".join(man.get("blocks", []))),
              ("steps per arm", cfg.get("steps")), ("test images", man.get("test_images")),
              ("corrupted cells", len(man.get("cells", [])) - 1), ("Mender definition", _definition(cfg))])
    df = run.tables["repair"]
    doc.heading(3, "Accuracy before and after the repair")
    doc.table(df[["arm", "clean_top1", "clean_change", "corrupted_top1", "corrupted_change", "ecs", "ics"]],
              "{:.3f}")


def _definition(cfg: dict) -> str:
    """The run's Mender definition; runs made before definitions existed used the seed's reading."""
    return cfg.get("definition") or "seed (recorded before --definition existed)"


def _plots(doc: _Doc, run: Run, out: Path) -> None:
    """Embed the run's plots and keep copies under ``out/plots``."""
    for name, path in run.plots.items():
        doc.image(path, f"{run.name}: {name}", f"plots/{run.name}-{name}")
        _copy(path, out / "plots" / f"{run.name}-{name}")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def write_report(run_dirs: list[Path], out: Path, title: str = "mamba-bench report") -> dict:
    if not run_dirs:
        raise MambaBenchError("report needs at least one run directory")
    runs, names = [], set()
    for d in run_dirs:
        name = Path(d).resolve().name
        k = 2
        base = name
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        runs.append(load_run(Path(d), name))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc()
    doc.heading(1, title)
    doc.para(f"{len(runs)} run(s): " + ", ".join(f"{r.name} ({r.kind})" for r in runs))
    index = []
    for run in runs:
        doc.heading(2, f"{run.name} — {run.kind}")
        {"corrupt": _corrupt_section, "dg": _dg_section, "finetune": _finetune_section,
         "explain": _explain_section, "repair": _repair_section}[run.kind](doc, run, out)
        index.append({"name": run.name, "kind": run.kind, "path": str(run.path)})
        if run.kind == "corrupt":
            dst = out / "data" / run.name
            dst.mkdir(parents=True, exist_ok=True)
            for f in ("manifest.json", "metrics.parquet", "summary.parquet", "predictions.parquet"):
                if (run.path / f).exists():
                    _copy(run.path / f, dst / f)
                else:  # a report folder made again: no stale predictions for compare to pair against
                    (dst / f).unlink(missing_ok=True)
    atomic_write_bytes(out / "report.md", "\n".join(doc.md).encode())
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(doc.html) + "</body></html>")
    atomic_write_bytes(out / "report.html", page.encode())
    atomic_write_json(out / "report.json", {"title": title, "runs": index})
    return {"markdown": out / "report.md", "html": out / "report.html", "runs": index}
