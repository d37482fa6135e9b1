"""plumbing.feature_stats: the statistics of a table version equal a direct computation, and
drift against a reference version shows on exactly the features that moved."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from plumbing.config import MonitoringConfig
from plumbing.feature_stats import ACCURACY, PROBABILITIES, compute, judge, population_stability_index
from transformations.catalog import USER_TRANSACTION_FEATURES
from transformations.schemas import SCHEMAS, TRANSACTIONS

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def test_statistics_equal_a_direct_computation(spark):
    rng = np.random.default_rng(3)
    values = [float(v) for v in rng.gamma(2.0, 10.0, 500)] + [None] * 20 + [5.0] * 30  # nulls and ties
    df = spark.createDataFrame([(value,) for value in values], "x double")
    (stats,) = compute(df, "t", ["x"])
    known = np.array([v for v in values if v is not None])

    assert (stats.rows, stats.count, stats.nulls) == (550, 530, 20)
    assert (stats.min, stats.max) == (known.min(), known.max())
    assert stats.mean == pytest.approx(known.mean(), rel=1e-12)
    assert stats.stddev == pytest.approx(known.std(ddof=1), rel=1e-12)
    # Approximate quantiles: the rank of each is within the stated error of the one asked.
    for probability, quantile in zip(PROBABILITIES, stats.quantiles, strict=True):
        at_or_below, below = (known <= quantile).mean(), (known < quantile).mean()
        assert below - 1 / ACCURACY <= probability <= at_or_below + 1 / ACCURACY, (probability, quantile)
    # The histogram's shares at its edges are exact.
    assert stats.cdf_at_edges == [float((known <= edge).mean()) for edge in stats.edges]


def test_a_feature_without_values_has_no_quantiles_nor_edges(spark):
    (stats,) = compute(spark.createDataFrame([(None,), (None,)], "x double"), "t", ["x"])
    assert (stats.count, stats.nulls, stats.min, stats.edges, stats.cdf_at_edges) == (0, 2, None, [], [])


def _transactions(spark, amount_factor: float):
    """The same 1,200 transactions of 80 users over 10 days, amounts times ``amount_factor``."""
    rng = np.random.default_rng(11)
    rows = [(f"t{n}", f"u{rng.integers(80)}", f"m{rng.integers(40)}", float(rng.lognormal(3, 1)) * amount_factor,
             "EUR", str(rng.choice(["DE", "FR", "PL"])), "d1", "web",
             T0 + timedelta(seconds=int(rng.integers(10 * 86_400)))) for n in range(1_200)]
    return spark.createDataFrame(rows, SCHEMAS[TRANSACTIONS])


def test_amounts_shifted_by_a_factor_drift_exactly_the_amount_features(spark):
    table = USER_TRANSACTION_FEATURES
    features = list(table.feature_names)
    before = compute(USER_TRANSACTION_FEATURES.build(transactions=_transactions(spark, 1.0)).persist(),
                     table.name, features)
    for stats in before:
        stats.table_version = 4
    shifted = USER_TRANSACTION_FEATURES.build(transactions=_transactions(spark, 3.0)).persist()
    after = compute(shifted, table.name, features, reference={stats.feature: stats for stats in before})
    blocking = judge(after, MonitoringConfig(psi_block=1.0))

    drifted = {stats.feature for stats in after if stats.warnings}
    amount_features = {name for name in features if name.startswith("txn_amount_") and "ratio" not in name}
    assert drifted == amount_features | {"txn_lifetime_spend"}
    # Counts, times and the amount ratio (scale-free) did not move at all.
    for stats in after:
        if stats.feature not in drifted:
            assert stats.psi == pytest.approx(0.0, abs=1e-3) and stats.ks == pytest.approx(0.0, abs=1e-3), stats
        assert stats.reference_version == 4
    assert blocking and all("monitoring.psi_block" in reason for reason in blocking)
    assert judge(after, MonitoringConfig()) == []  # blocking is off by default


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift():
    reference = [0.1 * n for n in range(1, 10)]
    assert population_stability_index(reference, reference) == 0.0
    small = population_stability_index(reference, [min(1.0, share + 0.02) for share in reference])
    large = population_stability_index(reference, [min(1.0, share + 0.2) for share in reference])
    assert 0 < small < large
