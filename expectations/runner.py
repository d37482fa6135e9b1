"""Run a suite against a Spark DataFrame and record the outcome in MLflow.

``validate`` gives each validation its own ephemeral GX context (in memory: nothing is
written unless data docs are rendered). GX evaluates every expectation as Spark queries:
aggregates plus, with the BASIC result format, at most 20 example values per failed
expectation, so the data is never collected to the driver.

Typical use in a job, inside ``plumbing.tracking.feature_table_run``::

    outcome = validate(table_df, feature_table_suite(table, expected_rows, newest_at_least))
    record_validation(outcome, table.name)
    if not outcome.success:
        tracking.fail_run(outcome.failed)   # the run ends FAILED with the reasons
        ...                                 # do not publish; exit non-zero
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import great_expectations as gx
import mlflow
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig
from pyspark import StorageLevel
from pyspark.sql import DataFrame

if TYPE_CHECKING:
    from great_expectations.data_context.store.store import DataDocsSiteConfigTypedDict

# Counts plus up to 20 example values per expectation; "COMPLETE" would collect every
# unexpected row to the driver.
RESULT_FORMAT: Final[Literal["BASIC"]] = "BASIC"
EXAMPLES_IN_MESSAGE = 5
DATA_DOCS_SITE = "tessera"


@dataclass
class ValidationOutcome:
    success: bool
    suite_name: str
    # evaluated_expectations, successful_expectations, unsuccessful_expectations, success_percent
    statistics: dict[str, float]
    # One readable line per failed expectation: its type and arguments (column, bounds)
    # and what was observed.
    failed: list[str]
    result_json: dict[str, Any]  # GX's full validation result, JSON-ready
    # The context that holds this result in its in-memory store; data docs are built from it.
    gx_context: AbstractDataContext = field(repr=False, compare=False)

    def render_data_docs(self, directory: str | Path) -> Path:
        """Write GX data docs (HTML) for this validation into ``directory``; return index.html."""
        directory = Path(directory)
        site_config: DataDocsSiteConfigTypedDict = {
            "class_name": "SiteBuilder",
            # GX's TypedDict is incomplete (its own note says so); its SiteBuilder takes this option.
            "show_how_to_buttons": False,  # type: ignore[typeddict-unknown-key]
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(directory)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        if DATA_DOCS_SITE in self.gx_context.get_site_names():
            self.gx_context.update_data_docs_site(DATA_DOCS_SITE, site_config)
        else:
            self.gx_context.add_data_docs_site(DATA_DOCS_SITE, site_config)
        self.gx_context.build_data_docs(site_names=[DATA_DOCS_SITE])
        # GX copies 3.3 MB of tutorial animations that no generated page shows.
        for animation in directory.glob("static/images/*.gif"):
            animation.unlink()
        return directory / "index.html"


def validate(df: DataFrame, suite: gx.ExpectationSuite) -> ValidationOutcome:
    """Validate ``df`` against ``suite``.

    GX runs several Spark queries over ``df``; it is persisted for the duration so an
    expensive plan is computed once, and released afterwards unless the caller had
    cached it already (cache it first if you will write it after validating).

    A first pass asks only whether each expectation holds (``BOOLEAN_ONLY``: 13 Spark jobs
    for the widest feature table, where counts and examples take 81). Only a suite that
    fails runs again with ``RESULT_FORMAT``, so a failure still says what was observed; a
    passing result records success per expectation, without observed values.
    """
    cached_here = not df.is_cached
    if cached_here:
        df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        outcome = _run(df, suite, "BOOLEAN_ONLY")
        if not outcome.success:
            outcome = _run(df, suite, RESULT_FORMAT)
    finally:
        if cached_here:
            df.unpersist()
    return outcome


def _run(df: DataFrame, suite: gx.ExpectationSuite,
         result_format: Literal["BOOLEAN_ONLY", "BASIC"]) -> ValidationOutcome:
    """One validation of ``df`` in a context of its own (its data docs show this run only)."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in job logs
    # persist=False: GX's own persist() is never undone; validate() caches instead.
    datasource = context.data_sources.add_spark(name="spark", persist=False)
    batch_definition = (datasource.add_dataframe_asset(name=suite.name)
                        .add_batch_definition_whole_dataframe("whole dataframe"))
    definition = context.validation_definitions.add(gx.ValidationDefinition(
        name=suite.name, data=batch_definition, suite=context.suites.add(gx.ExpectationSuite(
            name=suite.name, expectations=[expectation.copy() for expectation in suite.expectations]))))
    result = definition.run(batch_parameters={"dataframe": df}, result_format=result_format)
    result_json = result.to_json_dict()
    return ValidationOutcome(
        success=bool(result.success),
        suite_name=suite.name,
        statistics=dict(result.statistics),
        failed=[_describe_failure(r) for r in result_json["results"] if not r["success"]],
        result_json=result_json,
        gx_context=context,
    )


def record_validation(outcome: ValidationOutcome, table_name: str) -> None:
    """Log ``outcome`` to the active MLflow run.

    Metrics: validation_success (0/1), validation_evaluated_expectations,
    validation_successful_expectations, validation_unsuccessful_expectations,
    validation_success_percent. Tags: validation_success, validation_suite,
    great_expectations_version. Artifacts under ``validation/<table_name>/``: result.json
    (the full GX result), failed.txt (the readable failures) and data_docs/ (index.html).
    """
    if mlflow.active_run() is None:
        # MLflow would silently start a fresh, untagged run instead.
        raise RuntimeError("record_validation needs an active MLflow run "
                           "(open one with plumbing.tracking.feature_table_run)")
    stats = outcome.statistics
    mlflow.log_metrics({
        "validation_success": 1.0 if outcome.success else 0.0,
        "validation_evaluated_expectations": stats["evaluated_expectations"],
        "validation_successful_expectations": stats["successful_expectations"],
        "validation_unsuccessful_expectations": stats["unsuccessful_expectations"],
        "validation_success_percent": stats["success_percent"],
    })
    mlflow.set_tags({
        "validation_success": str(outcome.success).lower(),
        "validation_suite": outcome.suite_name,
        "great_expectations_version": gx.__version__,
    })
    artifact_dir = f"validation/{table_name}"
    mlflow.log_dict(outcome.result_json, f"{artifact_dir}/result.json")
    mlflow.log_text("".join(f"{line}\n" for line in outcome.failed), f"{artifact_dir}/failed.txt")
    with tempfile.TemporaryDirectory(prefix="tessera-data-docs-") as docs_dir:
        outcome.render_data_docs(docs_dir)
        mlflow.log_artifacts(docs_dir, f"{artifact_dir}/data_docs")


def _describe_failure(result: dict[str, Any]) -> str:
    """One line naming the expectation, its arguments and what was observed."""
    config = result["expectation_config"]
    if config.get("description"):
        name = f"{config['type']} ({config['description']})"
    else:
        arguments = ", ".join(f"{key}={_compact(value)}" for key, value in config["kwargs"].items()
                              if key != "batch_id")
        name = f"{config['type']}({arguments})"

    error = _exception_message(result.get("exception_info") or {})
    if error:
        return f"{name}: could not be evaluated: {error}"
    observed = result.get("result") or {}
    if "observed_value" in observed:
        return f"{name}: observed {_compact(observed['observed_value'])}"
    examples = observed.get("partial_unexpected_list", [])[:EXAMPLES_IN_MESSAGE]
    return (f"{name}: {observed.get('unexpected_count')} of {observed.get('element_count')} rows "
            f"unexpected, e.g. {_compact(examples)}")


def _exception_message(exception_info: dict[str, Any]) -> str | None:
    # Flat for an expectation that raised; keyed by metric when a metric failed.
    candidates = [exception_info, *(v for v in exception_info.values() if isinstance(v, dict))]
    for info in candidates:
        if info.get("raised_exception"):
            # Spark's messages go on with the whole query plan: keep the first line.
            return str(info.get("exception_message")).partition("\n")[0]
    return None


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
