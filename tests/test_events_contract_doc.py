"""docs/your_own_events.md, the events' contract written for users, says what the code
declares: per event type the columns in order, their types and which are required
(``schemas.SCHEMAS``), the allowed values (``schemas.ALLOWED_VALUES``) and the reasons a
record is dead-lettered (``cleaning.REJECT_KINDS``)."""
from __future__ import annotations

import re

from plumbing.config import REPO_ROOT
from transformations import cleaning
from transformations.schemas import ALLOWED_VALUES, SCHEMAS

PAGE = (REPO_ROOT / "docs" / "your_own_events.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## |\Z)", PAGE)
    assert match, f"no section '## {title}'"
    return match.group(1)


def _table_rows(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text``, cells stripped."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_each_event_type_lists_its_declared_columns_types_and_required_ones():
    for event_type, schema in SCHEMAS.items():
        rows = _table_rows(_section(event_type))
        documented = [(column, kind, required) for column, kind, required, *_ in rows]
        declared = [(field.name, field.dataType.simpleString(), "no" if field.nullable else "yes")
                    for field in schema.fields]
        assert documented == declared, event_type


def test_the_allowed_values_are_the_declared_ones():
    for event_type, columns in ALLOWED_VALUES.items():
        section = _section(event_type)
        for column, allowed in columns.items():
            match = re.search(rf"`{column}`: ([^;\n]+)", section)
            assert match, f"{event_type}: no allowed values for {column}"
            assert tuple(value.strip(" .") for value in match.group(1).split(",")) == allowed


def test_the_reasons_are_cleanings_in_its_order():
    table = _table_rows(_section("What happens to a record that does not fit"))
    reasons = [row[0].strip("`").split(":")[0] for row in table]
    first = (cleaning.OVERSIZE, *[kind for kind in cleaning.REJECT_KINDS if kind != cleaning.OVERSIZE])
    assert tuple(reasons) == first  # oversize is checked first; the rest in REJECT_KINDS order


def test_the_defaults_of_columns_an_export_lacks_are_ingests():
    """Every built-in default of `tessera ingest` (jobs.ingest_mapping.DEFAULTS) is in the
    page's table, for its event type, and the table lists no other."""
    from jobs.ingest_mapping import DEFAULTS

    match = re.search(r"(?ms)^### Columns an export lacks\n(.*?)(?=^#)", PAGE)
    assert match, "no section '### Columns an export lacks'"
    documented = set()
    for event_types, columns, default, *_ in _table_rows(match.group(1)):
        value = default.split(" ")[0].strip("`")
        if value.startswith(("null", "none")):
            continue
        documented |= {(event_type.strip(), column.strip(" `"), value)
                       for event_type in event_types.split(",") for column in columns.split(",")}
    assert documented == {(event_type, column, value) for event_type, defaults in DEFAULTS.items()
                          for column, value in defaults.items()}
