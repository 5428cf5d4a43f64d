"""The inference benchmark's results: ratios to the baseline, plots, the table on stdout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lab_utils.bench.cases import BASELINES, EXTRA_STYLES, STYLES


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Add rows/s, ratio to the baseline and share of the predicted ceiling."""
    table = table.copy()
    if "skipped" not in table:
        table["skipped"] = None
    table["rows_per_s"] = table["rows"] / table["seconds"]
    if "model_loads" in table:  # Spark runs only; none for the baselines
        table["model_loads"] = table["model_loads"].astype("Int64")
    keys = ["model", "n"]
    # The physical limit is the faster of the two single-process loops for that model and N.
    base = (table[table["style"].isin(BASELINES)].groupby(keys)["rows_per_s"].max())
    transfer = table[table["style"] == "transfer_only"].set_index(keys)["rows_per_s"]
    index = pd.MultiIndex.from_frame(table[keys])
    table["baseline_rows_per_s"] = base.reindex(index).to_numpy()
    table["transfer_rows_per_s"] = transfer.reindex(index).to_numpy()
    table["ratio_to_baseline"] = table["rows_per_s"] / table["baseline_rows_per_s"]
    ceiling = 1.0 / (1.0 / table["baseline_rows_per_s"] + 1.0 / table["transfer_rows_per_s"])
    table["predicted_ceiling_rows_per_s"] = ceiling
    table["share_of_ceiling"] = table["rows_per_s"] / ceiling
    iterator = table[table["style"] == "iterator"].set_index(keys)["rows_per_s"]
    table["ratio_to_iterator"] = table["rows_per_s"] / iterator.reindex(index).to_numpy()
    return table


def plot(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    palette = plt.get_cmap("tab10")
    shown = (*BASELINES, *STYLES, *EXTRA_STYLES)
    colors = {style: palette(i % 10) for i, style in enumerate(shown)}
    for model, part in table.groupby("model"):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        for style, rows in part[part["rows"] > 0].groupby("style"):
            rows = rows.sort_values("n")
            kw = {"marker": "o", "label": style, "color": colors.get(style)}
            left.plot(rows["n"], rows["seconds"], **kw)
            right.plot(rows["n"], rows["ratio_to_baseline"], **kw)
        left.set(xlabel="images (N)", ylabel="seconds (steady state)",
                 title=f"{model}: time vs N")
        right.axhline(1.0, color="black", lw=1, ls="--")
        right.set(xlabel="images (N)", ylabel="throughput / single-process baseline",
                  title=f"{model}: share of the baseline (the faster single-process loop)")
        left.legend(fontsize=8)
        right.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(table: pd.DataFrame) -> str:
    columns = ["model", "n", "style", "rows", "warmup_s", "seconds", "rows_per_s",
               "ratio_to_baseline", "share_of_ceiling", "worker_peak_rss_mb", "model_loads"]
    shown = table[table["rows"] > 0][[c for c in columns if c in table]].copy()
    return shown.to_string(index=False, float_format=lambda v: f"{v:.2f}")
