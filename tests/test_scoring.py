"""serving.scoring rests on scikit-learn internals (the fitted HistGradientBoostingClassifier's
_predictors, _bin_mapper, _baseline_prediction, _loss and the compiled _predict_from_raw_data),
for which there is no public equivalent: setup.py caps scikit-learn to the minor version tested,
and this test holds the compiled scores equal to predict_proba, bit for bit, without MLflow.
(At load time the registry checks the same, and serves through pyfunc when it fails.)"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.train_model import make_model
from serving import scoring


def _fit(countries: list):
    rng = np.random.default_rng(7)
    rows = 1500
    frame = pd.DataFrame({
        "country": rng.choice(countries, rows).astype(object),
        "amount": rng.gamma(2.0, 30.0, rows),
        "count_1h": rng.integers(0, 5, rows).astype(float),
    })
    frame.loc[rng.random(rows) < 0.1, "amount"] = np.nan  # a feature past its ttl is null
    label = ((frame["amount"].fillna(0) > 90) & (frame["country"] == "BR")) | (rng.random(rows) < 0.05)
    model = make_model(["country"], seed=1).fit(frame, label.astype(int))
    return model, list(frame.columns), {column: str(dtype) for column, dtype in frame.dtypes.items()}


@pytest.fixture(scope="module")
def fitted():
    return _fit(["DE", "FR", "US", "BR"])


def test_the_compiled_pipeline_scores_exactly_as_predict_proba(fitted):
    model, columns, dtypes = fitted
    compiled = scoring.CompiledPipeline.compile(model, columns)
    reference = lambda frame: model.predict_proba(frame)[:, 1]  # noqa: E731
    assert scoring.verify(compiled, reference, columns, dtypes, rows=500) is None
    # Both tree walkers: all trees at once in numpy, and scikit-learn's compiled one per tree.
    for count in (1, scoring.VECTORIZED_MAX_ROWS, scoring.VECTORIZED_MAX_ROWS + 1, 300):
        rows = {"country": (["DE", "XX", None] * count)[:count], "amount": [12.5, None, 400.0][:1] * count,
                "count_1h": [float(i % 4) for i in range(count)]}
        frame = pd.DataFrame({column: np.array(values, dtype=dtypes[column]) for column, values in rows.items()})
        assert np.array_equal(compiled.predict(rows), model.predict_proba(frame)[:, 1])


def test_a_model_that_saw_none_as_a_category_is_not_compiled():
    model, columns, _ = _fit(["DE", "FR", None])
    with pytest.raises(scoring.NotCompilable, match="None"):
        scoring.CompiledPipeline.compile(model, columns)
