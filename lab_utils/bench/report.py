"""The inference benchmark's results: ratios to the baseline, plots, the table on stdout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lab_utils.bench.baseline import ideal_rows_per_s
from lab_utils.bench.cases import (
    BASELINES,
    BENCH_STYLES,
    EXTRA_STYLES,
    PEER_STYLES,
    SINGLE,
    base_style,
)

#: The Spark styles that compete for "best Spark style" (not the no-work transfer probe, not
#: REST, not the row-at-a-time styles when capped: any style with rows counts), with or without
#: a ``--switches`` setting (``iterator+pipelined`` competes too).
SPARK_STYLES = tuple(s for s in BENCH_STYLES if s != "transfer_only")


def _is_spark_style(style: str) -> bool:
    return base_style(style) in SPARK_STYLES


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Add rows/s, ratios to the baseline and to the best Spark style, share of the predicted
    ceiling, and efficiency against the all-cores ideal (``single_thread`` x ``spark_cores``)."""
    table = table.copy()
    if "skipped" not in table:
        table["skipped"] = None
    table["rows_per_s"] = table["rows"] / table["seconds"]
    # One query end to end. The peers start their model instances in every query (neither Ray
    # Data nor Daft keeps a class's instances across queries): their ``query_s`` includes that
    # and the query closing; Spark's Python workers and the baselines keep the model loaded.
    if "query_s" not in table:
        table["query_s"] = float("nan")
    table["query_s"] = table["query_s"].fillna(table["seconds"])
    n_rows = table["rows_out"].fillna(table["rows"]) if "rows_out" in table else table["rows"]
    table["query_rows_per_s"] = n_rows / table["query_s"]
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
    single = table[table["style"] == SINGLE].set_index(keys)
    if len(single):
        ideal = pd.Series([ideal_rows_per_s(r, s, c) for r, s, c in zip(
            single["rows"], single["seconds"], single["spark_cores"], strict=True)],
            index=single.index)
        table["ideal_rows_per_s"] = ideal.reindex(index).to_numpy()
    else:
        table["ideal_rows_per_s"] = float("nan")
    table["efficiency"] = table["rows_per_s"] / table["ideal_rows_per_s"]
    spark = table[table["style"].map(_is_spark_style) & (table["rows"] > 0)]
    best = spark.loc[spark.groupby(keys)["rows_per_s"].idxmax()].set_index(keys)
    table["best_spark_style"] = best["style"].reindex(index).to_numpy()
    table["ratio_to_best_spark"] = (table["rows_per_s"]
                                    / best["rows_per_s"].reindex(index).to_numpy())
    return table


def plot(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    palette = plt.get_cmap("tab20")
    shown = (*BASELINES, SINGLE, *BENCH_STYLES, *EXTRA_STYLES, *PEER_STYLES.values())
    colors = {style: palette(i % 20) for i, style in enumerate(shown)}
    for model, part in table.groupby("model"):
        fig, (left, right, third) = plt.subplots(1, 3, figsize=(19, 4.5))
        for style, rows in part[part["rows"] > 0].groupby("style"):
            rows = rows.sort_values("n")
            kw = {"marker": "o", "label": style, "color": colors.get(style)}
            left.plot(rows["n"], rows["seconds"], **kw)
            right.plot(rows["n"], rows["ratio_to_baseline"], **kw)
            if "efficiency" in rows:
                third.plot(rows["n"], rows["efficiency"], **kw)
        left.set(xlabel="images (N)", ylabel="seconds (steady state)",
                 title=f"{model}: time vs N")
        right.axhline(1.0, color="black", lw=1, ls="--")
        right.set(xlabel="images (N)", ylabel="throughput / single-process baseline",
                  title=f"{model}: share of the baseline (the faster single-process loop)")
        third.axhline(1.0, color="black", lw=1, ls="--")
        third.set(xlabel="images (N)", ylabel="throughput / all-cores ideal",
                  title=f"{model}: efficiency (1 = single-threaded cost x cores)")
        left.legend(fontsize=8)
        right.legend(fontsize=8)
        third.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(table: pd.DataFrame) -> str:
    columns = ["model", "n", "style", "rows", "warmup_s", "seconds", "rows_per_s",
               "ratio_to_baseline", "efficiency", "ratio_to_best_spark", "share_of_ceiling",
               "query_rows_per_s", "worker_peak_rss_mb", "model_loads"]
    shown = table[table["rows"] > 0][[c for c in columns if c in table]].copy()
    return shown.to_string(index=False, float_format=lambda v: f"{v:.2f}")


def side_by_side(table: pd.DataFrame) -> str:
    """One line per model and N: the baselines, the ideal, the best Spark style and the peers,
    each as images/s, ratio to the baseline, to the best Spark style, and efficiency."""
    lines = []
    shown = [*BASELINES, SINGLE, *PEER_STYLES.values()]
    for (model, n), part in table[table["rows"] > 0].groupby(["model", "n"], sort=False):
        first = part.iloc[0]
        lines.append(f"{model}, N={n}: all-cores ideal {first['ideal_rows_per_s']:,.0f} images/s "
                     f"({first.get('spark_cores')} cores x single-threaded); baseline "
                     f"{first['baseline_rows_per_s']:,.0f} images/s")
        best = first.get("best_spark_style")
        picked = part[part["style"].isin([*shown, best])].set_index("style")
        for style in [*BASELINES, SINGLE, best, *PEER_STYLES.values()]:
            if style not in picked.index:
                continue
            row = picked.loc[style]
            name = f"{style} (best Spark)" if style == best else style
            rss = row.get("worker_peak_rss_mb")
            lines.append(
                f"  {name:<32} {row['rows_per_s']:>9,.0f} images/s  "
                f"x{row['ratio_to_baseline']:.2f} baseline  x{row['ratio_to_best_spark']:.2f} "
                f"best Spark  efficiency {row['efficiency']:.2f}  warm-up {row['warmup_s']:.1f} s  "
                f"one query end to end {row['query_rows_per_s']:,.0f} images/s"
                f"  peak RSS/process {rss if pd.notna(rss) else float('nan'):,.0f} MB")
    return "\n".join(lines)


def switches_side_by_side(table: pd.DataFrame) -> str:
    """One line per model, N and style run with ``--switches``: its images/s without a switch,
    then with each, as images/s and the ratio to the run without (above 1: the switch helped)."""
    timed = table[table["rows"] > 0]
    if "switch" not in timed or timed["switch"].isna().all():
        return ""
    lines = []
    bases = timed["style"].map(base_style)
    for (model, n, style), part in timed.groupby([timed["model"], timed["n"], bases],
                                                 sort=False):
        off = part[part["style"] == style]
        on = part[part["style"] != style]
        if off.empty or on.empty:
            continue
        rate = float(off["rows_per_s"].iloc[0])
        cells = [f"{str(row.style).split('+', 1)[1]} {row.rows_per_s:,.0f} "
                 f"(x{row.rows_per_s / rate:.2f})" for row in on.itertuples()]
        lines.append(f"{model} N={n} {style}: off {rate:,.0f} images/s; " + "; ".join(cells))
    return "\n".join(lines)
