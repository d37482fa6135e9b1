"""Scoring without pandas, MLflow or scikit-learn's input checks on the request path.

The training job's model (``jobs/train_model.py``'s ``make_model``) is a Pipeline: a
ColumnTransformer ordinal-encoding the categorical fields (the rest passed through), then
a binary HistGradientBoostingClassifier, which encodes the categories again internally.
Through ``mlflow.pyfunc`` and pandas a one-row prediction costs ~12 ms of CPU, almost all
of it data-frame handling and validation. :meth:`CompiledPipeline.compile` turns the
fitted pipeline, once per loaded version, into
  * per categorical column a dict: category -> the code the trees see (both encoders
    applied, by the fitted encoders themselves), unknown categories -> their code (NaN);
  * the trees as flat node arrays, with each categorical split as a 256-entry lookup of
    "goes left" built from scikit-learn's own bitsets,
and scores a batch with the same comparisons and the same summation order as
scikit-learn: the probabilities are bit-for-bit those of ``predict_proba``. A few rows go
through all trees at once in numpy; bigger batches through scikit-learn's own compiled
per-tree routine, one thread (no OpenMP thread team on a one-row request).

:func:`verify` compares the compiled model with the pyfunc model on probe rows; the
registry serves a version through the compiled path only when every probe is equal, and
through the generic pyfunc path otherwise (any other model shape raises
:class:`NotCompilable` here and takes the generic path too).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.ensemble._hist_gradient_boosting._predictor import _predict_from_raw_data
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

# Up to this many rows all trees are walked at once in numpy (~0.15 ms for one row of
# 200 trees); beyond, one call per tree of scikit-learn's compiled walker is cheaper.
VECTORIZED_MAX_ROWS = 16
_UNSEEN = "\x00unseen category\x00"  # a category no model was fitted on


class NotCompilable(ValueError):
    """The model is not the pipeline shape this module compiles; the message says why."""


class CompiledPipeline:
    """A fitted encoder + HistGradientBoostingClassifier pipeline, ready to score dicts
    of columns (column name -> one value per row)."""

    def __init__(self, sources: list[tuple[str, dict | None, float]], classifier: HistGradientBoostingClassifier):
        self.sources = sources  # per tree feature: (input column, category codes or None, unknown code)
        self.columns = sorted({column for column, _, _ in sources})
        self._loss = classifier._loss
        self._forest = _Forest(classifier)

    @classmethod
    def compile(cls, model, input_columns: Sequence[str]) -> CompiledPipeline:
        if not (isinstance(model, Pipeline) and len(model.steps) == 2):
            raise NotCompilable(f"not a two-step Pipeline: {type(model).__name__}")
        encode, classify = model.steps[0][1], model.steps[1][1]
        if not isinstance(encode, ColumnTransformer) or not isinstance(classify, HistGradientBoostingClassifier):
            raise NotCompilable("the pipeline is not ColumnTransformer -> HistGradientBoostingClassifier")
        if len(classify.classes_) != 2 or classify.n_trees_per_iteration_ != 1:
            raise NotCompilable("not a binary classifier")
        outer = _outer_sources(encode, list(input_columns))
        names = list(classify.feature_names_in_)
        if names != [name for name, _ in outer]:
            raise NotCompilable("the encoder's output columns are not the classifier's input columns")
        inner = classify._preprocessor
        if inner is None:  # no categorical features: the classifier takes the columns as they are
            order, inner_encoder, inner_mask = list(range(len(names))), None, np.zeros(len(names), bool)
        else:
            steps = {name: (transformer, mask) for name, transformer, mask in inner.transformers_}
            if (set(steps) - {"encoder", "numerical", "remainder"}
                    or not isinstance(steps["encoder"][0], OrdinalEncoder)):
                raise NotCompilable("unexpected internal preprocessing of the classifier")
            inner_encoder, inner_mask = steps["encoder"][0], np.asarray(steps["encoder"][1], bool)
            numerical_mask = np.asarray(steps["numerical"][1], bool)
            if not (inner_mask ^ numerical_mask).all():
                raise NotCompilable("the classifier's internal preprocessing does not use each column once")
            # ColumnTransformer output: the encoder's columns, then the numerical ones.
            order = [*np.flatnonzero(inner_mask), *np.flatnonzero(numerical_mask)]
        sources: list[tuple[str, dict | None, float]] = []
        for index in order:
            name, outer_codes = outer[index]
            column = name if outer_codes is None else outer_codes[0]
            if inner_mask[index]:
                if outer_codes is None:
                    raise NotCompilable(f"{name} is categorical in the classifier but not ordinal-encoded before it")
                categories, codes, unknown = outer_codes[1:]
                position = np.flatnonzero(inner_mask).tolist().index(index)
                final = _inner_codes(inner_encoder, position, [*codes, unknown])
                table = dict(zip(categories, final[:-1], strict=True))
                sources.append((column, table, final[-1]))
            elif outer_codes is not None:  # ordinal-encoded, then taken as a number
                categories, codes, unknown = outer_codes[1:]
                sources.append((column, dict(zip(categories, codes, strict=True)), unknown))
            else:
                sources.append((column, None, np.nan))
        return cls(sources, classify)

    def predict(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        """Probability of class 1 for each row."""
        cells = []
        for column, table, unknown in self.sources:
            values = columns[column]
            cells.append(values if table is None else [table.get(value, unknown) for value in values])
        features = np.array(cells, dtype=np.float64).T  # None -> NaN
        raw = self._forest.raw_predict(features)
        return self._loss.predict_proba(raw)[:, 1]


def _outer_sources(encode: ColumnTransformer, input_columns: list[str]) -> list[tuple[str, tuple | None]]:
    """The encoder's output columns in order: (name, None) for a passed-through column,
    (name, (input column, categories, codes, unknown code)) for an ordinal-encoded one."""
    sources: list[tuple[str, tuple | None]] = []
    for name, transformer, columns in encode.transformers_:
        if transformer == "drop" or (isinstance(columns, list) and not columns):
            continue
        if not (isinstance(columns, list) and all(isinstance(column, str) for column in columns)):
            raise NotCompilable(f"transformer {name!r} does not select columns by name")
        unknown_columns = set(columns) - set(input_columns)
        if unknown_columns:
            raise NotCompilable(f"transformer {name!r} uses columns outside the signature: {sorted(unknown_columns)}")
        if transformer == "passthrough" or (isinstance(transformer, FunctionTransformer) and transformer.func is None):
            sources += [(column, None) for column in columns]
        elif isinstance(transformer, OrdinalEncoder):
            for position, column in enumerate(columns):
                # scikit-learn encodes a None seen in training as a category of its own, not
                # as missing; a request's None would take the unknown code here instead.
                if any(category is None for category in transformer.categories_[position]):
                    raise NotCompilable(f"{column}: None was a category in training")
                categories = [category for category in transformer.categories_[position]
                              if isinstance(category, str)]
                probe = pd.DataFrame({other: [_UNSEEN] * (len(categories) + 1) for other in columns})
                probe[column] = [*categories, _UNSEEN]
                codes = np.asarray(transformer.transform(probe), dtype=np.float64)[:, position]
                sources.append((column, (column, categories, list(codes[:-1]), float(codes[-1]))))
        else:
            raise NotCompilable(f"transformer {name!r} is a {type(transformer).__name__}")
    return sources


def _inner_codes(encoder: OrdinalEncoder, position: int, values: list[float]) -> list[float]:
    """The classifier's own encoding of one of its categorical columns, for ``values``."""
    width = len(encoder.categories_)
    probe = np.full((len(values), width), np.nan)
    probe[:, position] = values
    return [float(code) for code in np.asarray(encoder.transform(probe), dtype=np.float64)[:, position]]


class _Forest:
    """The classifier's trees as flat arrays (all trees' nodes, one after the other)."""

    def __init__(self, classifier: HistGradientBoostingClassifier):
        predictors = [iteration[0] for iteration in classifier._predictors]
        self._predictors = predictors
        self._known_categories, self._feature_map = classifier._bin_mapper.make_known_categories_bitsets()
        self._baseline = classifier._baseline_prediction.astype(np.float64).ravel()
        offsets = np.cumsum([0] + [len(predictor.nodes) for predictor in predictors])
        codes = np.arange(256)

        def members(bitset: np.ndarray) -> np.ndarray:  # a 256-bit bitset (8 uint32) -> 256 booleans
            return ((bitset[codes // 32] >> (codes % 32).astype(np.uint32)) & 1).astype(bool)

        feature, threshold, left, right, missing_left, value, table_row = [], [], [], [], [], [], []
        tables = [np.zeros(256, bool)]  # row 0: not a categorical split
        for predictor, offset in zip(predictors, offsets, strict=False):
            nodes = predictor.nodes
            here = np.arange(len(nodes)) + offset
            leaf = nodes["is_leaf"].astype(bool)
            feature.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp))
            threshold.append(nodes["num_threshold"].astype(np.float64))
            # A leaf points at itself: every row walks the deepest tree's depth, then sits on its leaf.
            left.append(np.where(leaf, here, nodes["left"].astype(np.intp) + offset))
            right.append(np.where(leaf, here, nodes["right"].astype(np.intp) + offset))
            missing_left.append(nodes["missing_go_to_left"].astype(bool))
            value.append(nodes["value"].astype(np.float64))
            rows = np.zeros(len(nodes), np.intp)
            for node in np.flatnonzero(nodes["is_categorical"].astype(bool) & ~leaf):
                # scikit-learn's rule: in the split's bitset -> left; else a known category
                # -> right; an unknown category goes where missing values go.
                in_left = members(predictor.raw_left_cat_bitsets[nodes["bitset_idx"][node]])
                known = members(self._known_categories[self._feature_map[nodes["feature_idx"][node]]])
                rows[node] = len(tables)
                tables.append(in_left | (~known & bool(nodes["missing_go_to_left"][node])))
            table_row.append(rows)
        self._roots = offsets[:-1]
        self._feature, self._threshold = np.concatenate(feature), np.concatenate(threshold)
        self._left, self._right = np.concatenate(left), np.concatenate(right)
        self._missing_left, self._value = np.concatenate(missing_left), np.concatenate(value)
        self._table_row = np.concatenate(table_row)
        self._categorical = self._table_row > 0
        self._has_categorical = bool(self._categorical.any())
        self._tables = np.stack(tables)
        self._depth = max((predictor.get_max_depth() for predictor in predictors), default=0)

    def raw_predict(self, features: np.ndarray) -> np.ndarray:
        """The raw (log-odds) predictions, each the baseline plus the trees' leaf values
        added one tree after the other, as scikit-learn adds them."""
        if len(features) <= VECTORIZED_MAX_ROWS:
            leaf_values = self._walk_all_trees(features)
            summed = np.empty((len(features), leaf_values.shape[1] + 1))
            summed[:, 0] = self._baseline[0]
            summed[:, 1:] = leaf_values
            return np.add.accumulate(summed, axis=1)[:, -1]  # sequential, left to right
        features = np.ascontiguousarray(features)
        raw = np.full(len(features), self._baseline[0])
        out = np.empty(len(features))
        for predictor in self._predictors:
            _predict_from_raw_data(predictor.nodes, features, predictor.raw_left_cat_bitsets,
                                   self._known_categories, self._feature_map, 1, out)
            raw += out
        return raw

    def _walk_all_trees(self, features: np.ndarray) -> np.ndarray:
        """Leaf values, rows x trees: every tree walked one level at a time, in numpy."""
        node = np.broadcast_to(self._roots, (len(features), len(self._roots))).copy()
        row = np.arange(len(features))[:, None]
        for _ in range(self._depth):
            value = features[row, self._feature[node]]
            missing = np.isnan(value)
            go_left = value <= self._threshold[node]  # False for NaN
            if missing.any():
                go_left = np.where(missing, self._missing_left[node], go_left)
            if self._has_categorical:
                categorical = self._categorical[node] & ~missing
                if categorical.any():
                    category = value[categorical]
                    # scikit-learn: a negative category is treated as missing; else its byte.
                    go_left[categorical] = np.where(
                        category < 0, self._missing_left[node[categorical]],
                        self._tables[self._table_row[node[categorical]], category.clip(0, 255).astype(np.uint8)])
            node = np.where(go_left, self._left[node], self._right[node])
        return self._value[node]


def verify(compiled: CompiledPipeline, reference, input_columns: Sequence[str], dtypes: Mapping[str, str],
           rows: int = 256, seed: int = 0) -> str | None:
    """None when ``compiled`` gives exactly the scores of ``reference(frame)`` (class-1
    probabilities) on random probe rows: every known category and an unknown one, numbers
    on and just past the trees' thresholds, NaN; otherwise what differed."""
    rng = np.random.default_rng(seed)
    thresholds: dict[str, list[float]] = {}
    for column, _, _ in compiled.sources:
        thresholds.setdefault(column, [])
    names = [column for column, _, _ in compiled.sources]
    forest = compiled._forest
    for index in np.unique(forest._feature[~forest._categorical]):
        used = forest._threshold[(forest._feature == index) & ~forest._categorical]
        thresholds[names[index]] += [*used, *np.nextafter(used, np.inf)]
    categories = {column: [*table, _UNSEEN] for column, table, _ in compiled.sources if table is not None}
    columns: dict[str, list] = {}
    for column in input_columns:
        if column in categories:
            columns[column] = list(rng.choice(categories[column], rows))
        elif dtypes.get(column) == "object":
            columns[column] = [_UNSEEN] * rows
        else:
            pool = np.array([*thresholds.get(column, []), 0.0, 1.0, -1.0, 1e9])
            values = rng.choice(pool, rows) * np.where(rng.random(rows) < 0.1, rng.uniform(0.5, 2, rows), 1)
            values[rng.random(rows) < 0.15] = np.nan
            columns[column] = [None if np.isnan(value) else float(value) for value in values]
    frame = pd.DataFrame({column: np.array(cells, dtype=dtypes[column]) for column, cells in columns.items()})
    expected = np.asarray(reference(frame))
    for start, stop in ((0, 1), (0, VECTORIZED_MAX_ROWS), (0, rows)):  # both tree walkers
        got = compiled.predict({column: cells[start:stop] for column, cells in columns.items()})
        if not np.array_equal(got, expected[start:stop]):
            worst = float(np.nanmax(np.abs(got - expected[start:stop])))
            return f"compiled scores differ from the model's on probe rows {start}..{stop} (max {worst:g})"
    return None
