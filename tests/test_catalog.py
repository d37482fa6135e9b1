"""The catalog is the one declaration of each feature table: it must agree with the code."""
import inspect
import re
import shutil
from datetime import timedelta
from pathlib import Path

import transformations
from transformations.catalog import FEATURE_TABLES, definitions_hash


def test_every_table_declares_exactly_the_sources_its_build_reads():
    for table in FEATURE_TABLES.values():
        assert tuple(inspect.signature(table.build).parameters)[: len(table.sources)] == table.sources, table.name


def test_feature_names_are_unique_across_tables_and_carry_a_window_or_scope():
    names = [name for table in FEATURE_TABLES.values() for name in table.feature_names]
    assert len(names) == len(set(names))
    scoped = ("_1h", "_24h", "_7d", "_30d", "_lifetime_", "_since_prev", "_ratio")
    assert all(any(part in name for part in scoped) for name in names), names


def test_no_window_is_longer_than_its_tables_ttl_and_the_batch_job_reads_the_longest():
    """The batch job reads LOOKBACK of history before its range: a window longer than
    that would be silently cut (and validation would still pass)."""
    from jobs.batch_features import LOOKBACK

    unit = {"h": timedelta(hours=1), "d": timedelta(days=1)}
    for table in FEATURE_TABLES.values():
        for name in table.feature_names:
            for count, letter in re.findall(r"_(\d+)([hd])(?=_|$)", name):
                assert int(count) * unit[letter] <= table.ttl, f"{name}: window longer than {table.name}'s ttl"
    assert LOOKBACK == max(table.ttl for table in FEATURE_TABLES.values()) == timedelta(days=30)


def test_definitions_hash_changes_with_any_definition_and_only_then(tmp_path):
    package = Path(transformations.__file__).parent
    copy = tmp_path / "transformations"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert definitions_hash(copy) == definitions_hash() and len(definitions_hash()) == 64
    merchants = copy / "merchants.py"
    merchants.write_text(merchants.read_text().replace("1", "2", 1))  # one character of one definition
    assert definitions_hash(copy) != definitions_hash()
