"""What the terminal shows: the tables the commands and the demo print (rich tables, Markdown, JSON).

One module for both the CLI and ``demo``, so the demo prints exactly what the commands do without
reaching into the CLI. Printing only: every number comes from the library call that made it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

out_console = Console()


def print_run_summary(metrics, summary, out: Path) -> None:
    """One table per data set: clean and mean corrupted top-1, mCE and relative mCE, and why any is undefined."""
    def fmt(v):
        return "—" if v is None or v != v else f"{v:.1f}"

    for dataset in dict.fromkeys(metrics["dataset"]):
        m_ds, s_ds = metrics[metrics.dataset == dataset], summary[summary.dataset == dataset]
        table = Table(title=f"top-1 (%) — {dataset} — {out}")
        for col in ("model", "clean", "corrupted (mean)", "mCE", "relative mCE"):
            table.add_column(col, justify="left" if col == "model" else "right")
        clean = m_ds[m_ds.corruption == "clean"].set_index("model")["top1"]
        means = s_ds[s_ds.corruption == "mean"].set_index("model")
        for model in dict.fromkeys(m_ds["model"]):
            m = means.loc[model] if model in means.index else None
            table.add_row(model, fmt(clean.get(model)), fmt(None if m is None else m["mean_top1"]),
                          fmt(None if m is None else m["ce"]), fmt(None if m is None else m["relative_ce"]))
        out_console.print(table)
        notes = dict.fromkeys(n for n in means.get("note", []) if isinstance(n, str) and n)
        for note in notes:
            out_console.print(f"  note: {note}")


def print_dg(res: dict, selection: str, run: Path, fmt: str = "table") -> None:
    """dg-eval's tables: accuracy per test domain (mean ± std over seeds) and the domain gap."""
    from mamba_bench.dg.run import summary_table

    header, body = summary_table(res["frame"], selection)
    gap_df = res.get("gap")
    if fmt == "json":
        print(json.dumps({"results": res["results"], "plot": res["plot"], "selection": selection,
                          "table": [dict(zip(header, r, strict=True)) for r in body],
                          "gap": None if gap_df is None else gap_df.to_dict("records")}, indent=2))
        return
    if fmt == "markdown":
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for r in body:
            print("| " + " | ".join(r) + " |")
    else:
        table = Table(title=f"test-domain top-1 (%), {selection} selection, mean ± std over seeds — {run}")
        for c in header:
            table.add_column(c, justify="right")
        for r in body:
            table.add_row(*r)
        out_console.print(table)
    if gap_df is not None:
        g = gap_df.groupby("algorithm", sort=False)[["delta", "B", "C", "feat"]].mean().reset_index()
        if fmt == "markdown":
            print("\n| algorithm | Δ | B | C | Feat. |\n|---|---|---|---|---|")
            for r in g.itertuples():
                print(f"| {r.algorithm} | {r.delta:.3f} | {r.B:.3f} | {r.C:.3f} | {r.feat:.3f} |")
        else:
            table = Table(title="domain gap: MMD source vs target (lower is better), mean over cells")
            for c in ("algorithm", "Δ", "B", "C", "Feat."):
                table.add_column(c, justify="right")
            for r in g.itertuples():
                table.add_row(r.algorithm, f"{r.delta:.3f}", f"{r.B:.3f}", f"{r.C:.3f}", f"{r.feat:.3f}")
            out_console.print(table)


def print_frame(df, fmt: str) -> bool:
    """Print a result table as JSON records or Markdown; False for ``table`` (the caller's rich table)."""
    if fmt == "json":
        print(df.to_json(orient="records", indent=2))
        return True
    if fmt == "markdown":
        print("| " + " | ".join(map(str, df.columns)) + " |\n|" + "---|" * len(df.columns))
        for row in df.itertuples(index=False):
            print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
        return True
    return False


def print_predictions(results: list[dict], fmt: str) -> None:
    """predict's top-k per image: JSON, Markdown or a rich table each."""
    if fmt == "json":
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if fmt == "markdown":
                print(f"### {r['image']}\n\n| rank | class | label | logit | probability |\n|---|---|---|---|---|")
                for t in r["topk"]:
                    print(f"| {t['rank']} | {t['index']} | {t['label']} | {t['logit']:.4f} | {t['probability']:.4f} |")
                print()
                continue
            table = Table(title=r["image"])
            for c in ("rank", "class", "label", "logit", "probability"):
                table.add_column(c)
            for t in r["topk"]:
                table.add_row(str(t["rank"]), str(t["index"]), t["label"], f"{t['logit']:.4f}",
                              f"{t['probability']:.4f}")
            out_console.print(table)


def print_models(specs, fmt: str) -> None:
    """The registry as JSON or a rich table."""
    rows = [{"name": s.name, "family": s.family, "description": s.description,
             "timm_name": s.timm_name} for s in specs]
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="models (any timm model name works too)")
        for c in ("name", "family", "description", "timm_name"):
            table.add_column(c)
        for r in rows:
            table.add_row(r["name"], r["family"], r["description"], r["timm_name"] or "")
        out_console.print(table)
