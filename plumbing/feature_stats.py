"""What each feature of a table version looks like, and what moved since a reference version.

The batch job computes, on the features it validated (the persisted DataFrame of the
validation pass: no second read of the table), per feature:

- count (non-null), nulls, min, max, mean, sample standard deviation: exact;
- quantiles at ``PROBABILITIES`` with Spark's ``percentile_approx`` at ``ACCURACY``:
  each is a value whose rank is within ``1 / ACCURACY`` of the asked one (the stated
  error, as a fraction of the rows);
- a histogram of equal-frequency bins: the deciles as edges and the exact share of the
  values at or below each (``cdf_at_edges``; ties make bins unequal, which is what a
  count feature looks like).

Drift against a reference version (default: the table's previous version), per feature,
on the reference's decile edges (the bins of the population stability index):

- ``psi``: population stability index, sum over the 10 bins of
  ``(share_now - share_ref) * ln(share_now / share_ref)``, a share of 0 taken as
  ``EPSILON``. Usual reading: under 0.1 stable, 0.1-0.25 moving, over 0.25 shifted;
- ``ks``: the largest gap between the two cumulative distributions at the reference's
  edges, a lower bound of the two-sample Kolmogorov-Smirnov distance (exact at the edges);
- the change of the null fraction.

A feature over ``monitoring.psi_warn`` or ``monitoring.ks_warn`` is a warning; over
``monitoring.psi_block`` (unset by default) it blocks publication like a failed expectation.
The figures are kept in the Delta table ``feature_statistics`` (one row per table, version
and feature) and in the run of the version (``feature_statistics.json``, a PNG panel per
feature).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from plumbing.config import Config, MonitoringConfig
from plumbing.lake import LakeTable

FEATURE_STATISTICS = "feature_statistics"
PROBABILITIES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ACCURACY = 10_000  # percentile_approx: rank error at most 1/ACCURACY of the rows
EPSILON = 1e-4     # the share a PSI bin counts with when one side has none


@dataclass
class FeatureStatistics:
    """One feature of one table version; drift fields are None without a reference."""

    table_name: str
    feature: str
    rows: int
    count: int                     # non-null values
    nulls: int
    min: float | None
    max: float | None
    mean: float | None
    stddev: float | None
    quantiles: list[float | None]  # at PROBABILITIES
    edges: list[float]             # the deciles: the histogram's and a later PSI's bins
    cdf_at_edges: list[float]      # share of the non-null values at or below each edge
    table_version: int | None = None
    reference_version: int | None = None
    psi: float | None = None
    ks: float | None = None
    null_fraction_change: float | None = None
    computed_at: datetime | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def null_fraction(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0


STATISTICS_SCHEMA = T.StructType([
    T.StructField("table_name", T.StringType(), False), T.StructField("feature", T.StringType(), False),
    T.StructField("rows", T.LongType(), False), T.StructField("count", T.LongType(), False),
    T.StructField("nulls", T.LongType(), False),
    *[T.StructField(name, T.DoubleType(), True) for name in ("min", "max", "mean", "stddev")],
    T.StructField("quantiles", T.ArrayType(T.DoubleType()), False),
    T.StructField("edges", T.ArrayType(T.DoubleType()), False),
    T.StructField("cdf_at_edges", T.ArrayType(T.DoubleType()), False),
    T.StructField("table_version", T.LongType(), True), T.StructField("reference_version", T.LongType(), True),
    *[T.StructField(name, T.DoubleType(), True) for name in ("psi", "ks", "null_fraction_change")],
    T.StructField("computed_at", T.TimestampType(), False),
    T.StructField("warnings", T.ArrayType(T.StringType()), False),
])


def statistics_table(cfg: Config) -> LakeTable:
    return LakeTable.for_config(cfg, FEATURE_STATISTICS, time_column="computed_at")


# ---- computing -------------------------------------------------------------------------------
def compute(df: DataFrame, table_name: str, features: Sequence[str],
            reference: dict[str, FeatureStatistics] | None = None) -> list[FeatureStatistics]:
    """The statistics of ``features`` of ``df``, and their drift from ``reference`` (feature ->
    its statistics in the reference version; a feature it lacks gets no drift). Two
    aggregations over ``df`` (persist it first).

    Both run on the features in long form (feature, value), grouped by feature: a few
    aggregate expressions whatever the number of features. (One wide aggregation with
    every expression of every feature cost 10-30 s of code generation on a few thousand
    rows, measured on this machine.)"""
    reference = reference or {}
    long = df.select(F.explode(F.map_from_arrays(F.array(*[F.lit(name) for name in features]),
                                                 F.array(*[F.col(name).cast("double") for name in features])))
                     .alias(*_LONG))
    value = F.col("value")
    summary = {row["feature"]: row for row in long.groupBy("feature").agg(
        F.count(F.lit(1)).alias("rows"), F.count(value).alias("count"), F.min(value).alias("min"),
        F.max(value).alias("max"), F.avg(value).alias("mean"), F.stddev_samp(value).alias("stddev"),
        F.percentile_approx(value, list(PROBABILITIES), ACCURACY).alias("quantiles")).collect()}
    deciles = [PROBABILITIES.index(p) for p in DECILES]
    edges = {feature: [row["quantiles"][i] for i in deciles] for feature, row in summary.items() if row["count"]}
    ref_edges = {feature: reference[feature].edges for feature in edges if feature in reference}

    # Where each value falls among the sorted edges: the number of edges below it. A value
    # is at or below edge i exactly when that number is at most i.
    def position(edges_of: dict[str, list[float]]):
        if not edges_of:
            return F.lit(-1)
        lookup = F.create_map(*[part for feature, feature_edges in edges_of.items()
                                for part in (F.lit(feature), F.array(*[F.lit(edge) for edge in feature_edges]))])
        return F.coalesce(F.size(F.filter(lookup[F.col("feature")], lambda edge: edge < value)), F.lit(-1))

    own_counts = {feature: [0] * len(feature_edges) for feature, feature_edges in edges.items()}
    ref_counts = {feature: [0] * len(feature_edges) for feature, feature_edges in ref_edges.items()}
    positions = (long.where(value.isNotNull())
                 .groupBy("feature", position(edges).alias("own"), position(ref_edges).alias("ref")).count())
    for row in positions.collect():
        for counts, at in ((own_counts, row["own"]), (ref_counts, row["ref"])):
            if row["feature"] in counts and at >= 0:
                for edge in range(at, len(counts[row["feature"]])):
                    counts[row["feature"]][edge] += row["count"]

    result = []
    for feature in features:
        row, count = summary[feature], summary[feature]["count"]
        stats = FeatureStatistics(
            table_name, feature, row["rows"], count, row["rows"] - count, row["min"], row["max"], row["mean"],
            row["stddev"], list(row["quantiles"] or []), edges.get(feature, []),
            [below / count for below in own_counts.get(feature, [])])
        if feature in ref_counts:
            before = reference[feature]
            now_cdf = [below / count for below in ref_counts[feature]]
            stats.reference_version = before.table_version
            stats.psi = population_stability_index(before.cdf_at_edges, now_cdf)
            stats.ks = max((abs(a - b) for a, b in zip(before.cdf_at_edges, now_cdf, strict=True)), default=0.0)
            stats.null_fraction_change = stats.null_fraction - before.null_fraction
        result.append(stats)
    return result


_LONG = ("feature", "value")


def population_stability_index(reference_cdf: Sequence[float], current_cdf: Sequence[float]) -> float:
    """PSI over the bins the edges make (below the first, between each two, above the last),
    from the cumulative shares at the edges."""
    def shares(cdf: Sequence[float]) -> list[float]:
        bounds = [0.0, *cdf, 1.0]
        return [max(high - low, 0.0) for low, high in zip(bounds, bounds[1:], strict=False)]

    total = 0.0
    for expected, actual in zip(shares(reference_cdf), shares(current_cdf), strict=True):
        if expected == 0 and actual == 0:
            continue  # a bin neither side uses (equal edges of a count feature)
        expected, actual = max(expected, EPSILON), max(actual, EPSILON)
        total += (actual - expected) * math.log(actual / expected)
    return total


def judge(statistics: Sequence[FeatureStatistics], thresholds: MonitoringConfig) -> list[str]:
    """Set each feature's warnings; return the reasons to block publication (none unless
    ``psi_block`` is set and exceeded)."""
    blocking = []
    for stats in statistics:
        if stats.psi is None:
            continue
        if stats.psi > thresholds.psi_warn:
            stats.warnings.append(f"psi {stats.psi:.3f} > {thresholds.psi_warn}")
        if stats.ks is not None and stats.ks > thresholds.ks_warn:
            stats.warnings.append(f"ks {stats.ks:.3f} > {thresholds.ks_warn}")
        if thresholds.psi_block is not None and stats.psi > thresholds.psi_block:
            blocking.append(f"{stats.feature}: drift psi {stats.psi:.3f} above the blocking threshold "
                            f"{thresholds.psi_block} (monitoring.psi_block) against version {stats.reference_version}")
    return blocking


def drift_line(table_name: str, statistics: Sequence[FeatureStatistics]) -> str:
    """One line for a person: how many features drifted, and the worst."""
    compared = [stats for stats in statistics if stats.psi is not None]
    if not compared:
        return f"{table_name}: no reference version to measure drift against"
    worst = max(compared, key=lambda stats: stats.psi or 0.0)
    warned = [stats.feature for stats in compared if stats.warnings]
    reference = compared[0].reference_version
    return (f"{table_name}: drift against v{reference}: {len(warned)} of {len(compared)} features over the "
            f"warning threshold{' (' + ', '.join(warned) + ')' if warned else ''}; largest psi "
            f"{worst.psi:.3f} ({worst.feature})")


# ---- keeping -------------------------------------------------------------------------------------
def save(cfg: Config, statistics: Sequence[FeatureStatistics], table_version: int, computed_at: datetime) -> None:
    """Append the statistics of ``table_version`` to ``feature_statistics`` (no Spark job)."""
    for stats in statistics:
        stats.table_version, stats.computed_at = table_version, computed_at
    rows = [{name.name: getattr(stats, name.name) for name in fields(FeatureStatistics)} for stats in statistics]
    statistics_table(cfg).append_arrow(pa.Table.from_pylist(rows), STATISTICS_SCHEMA)


def load(cfg: Config, table_name: str, table_version: int | None = None) -> dict[str, FeatureStatistics]:
    """Feature -> statistics of ``table_version`` of ``table_name`` (default: the newest
    version with statistics); empty when there are none."""
    table = statistics_table(cfg)
    if not table.exists():
        return {}
    kept = table.read_arrow(filter=pc.field("table_name") == table_name)
    if table_version is None and kept.num_rows:
        table_version = pc.max(kept["table_version"]).as_py()
    kept = kept.filter(pc.field("table_version") == table_version)
    # A version computed twice (a re-run): the newest computation counts.
    newest: dict[str, dict] = {}
    for row in sorted(kept.to_pylist(), key=lambda row: row["computed_at"]):
        newest[row["feature"]] = row
    names = {name.name for name in fields(FeatureStatistics)}
    return {feature: FeatureStatistics(**{key: value for key, value in row.items() if key in names})
            for feature, row in newest.items()}


def as_json(statistics: Sequence[FeatureStatistics]) -> list[dict]:
    return [{**asdict(stats), "computed_at": stats.computed_at.isoformat() if stats.computed_at else None}
            for stats in statistics]


def from_json(rows: Sequence[dict]) -> list[FeatureStatistics]:
    """The statistics ``as_json`` wrote (a run's ``feature_statistics.json`` or ``skew.json``);
    keys it does not know are left out."""
    names = {name.name for name in fields(FeatureStatistics)}
    return [FeatureStatistics(**{key: value for key, value in row.items() if key in names and key != "computed_at"},
                              computed_at=datetime.fromisoformat(row["computed_at"]) if row.get("computed_at")
                              else None)
            for row in rows]


def plot(statistics: Sequence[FeatureStatistics], reference: dict[str, FeatureStatistics] | None = None):
    """One panel per feature: its equal-frequency histogram (density between the deciles),
    and the reference version's as a line; the title gives the PSI."""
    import matplotlib
    matplotlib.use("Agg")  # no display: this runs in jobs
    from matplotlib import pyplot as plt

    reference = reference or {}
    shown = [stats for stats in statistics if len(stats.edges) > 1]
    columns = 4
    figure, axes = plt.subplots(max(1, math.ceil(len(shown) / columns)), columns, squeeze=False,
                                figsize=(4 * columns, 2.6 * max(1, math.ceil(len(shown) / columns))))
    for axis in axes.flat[len(shown):]:
        axis.set_visible(False)
    for axis, stats in zip(axes.flat, shown, strict=False):
        for source, style in ((stats, {"color": "tab:blue", "alpha": 0.6}),
                              (reference.get(stats.feature), {"color": "black", "fill": False})):
            if source is None or len(source.edges) < 2:
                continue
            widths = [high - low for low, high in zip(source.edges, source.edges[1:], strict=False)]
            shares = [high - low for low, high in zip(source.cdf_at_edges, source.cdf_at_edges[1:], strict=False)]
            heights = [share / width if width > 0 else 0.0 for share, width in zip(shares, widths, strict=True)]
            axis.bar(source.edges[:-1], heights, width=widths, align="edge", **style)
        drift = "" if stats.psi is None else f"  psi {stats.psi:.2f}"
        axis.set_title(f"{stats.feature}{drift}", fontsize=8, color="tab:red" if stats.warnings else "black")
        axis.tick_params(labelsize=6)
    # Fixed spacing: tight_layout measured every label and took as long as the drawing.
    height = figure.get_figheight()  # margins of a fixed size in inches, whatever the rows
    figure.subplots_adjust(left=0.04, right=0.99, bottom=0.3 / height, top=1 - 0.35 / height, wspace=0.25,
                           hspace=0.6)
    return figure
