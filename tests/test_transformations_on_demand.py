"""The request-time ratio: its Column definition and its plain-Python twin agree."""
from __future__ import annotations

from pyspark.sql import functions as F

from transformations.on_demand import amount_to_mean_ratio, amount_to_mean_ratio_value

# (amount, mean, expected ratio), worked out by hand
CASES = [
    (30.0, 10.0, 3.0),
    (5.0, 4.0, 1.25),
    (0.0, 5.0, 0.0),      # a zero amount is a real amount
    (10.0, 0.0, None),    # no usual amount to compare with
    (0.0, 0.0, None),
    (10.0, -0.0, None),
    (None, 10.0, None),
    (10.0, None, None),
    (None, None, None),
]


def test_python_twin_gives_the_hand_computed_ratios():
    assert [amount_to_mean_ratio_value(amount, mean) for amount, mean, _ in CASES] == \
        [ratio for _, _, ratio in CASES]


def test_column_and_python_twin_agree_on_null_zero_and_normal_cases(spark):
    cases = spark.createDataFrame([(i, amount, mean) for i, (amount, mean, _) in enumerate(CASES)],
                                  "case long, amount double, mean double")
    ratios = cases.select(F.col("case"), amount_to_mean_ratio(F.col("amount"), F.col("mean")).alias("ratio"))
    by_case = {row["case"]: row["ratio"] for row in ratios.collect()}
    assert [by_case[i] for i in range(len(CASES))] == \
        [amount_to_mean_ratio_value(amount, mean) for amount, mean, _ in CASES]

