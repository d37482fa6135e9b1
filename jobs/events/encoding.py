"""Columns of events to Arrow tables of the declared schemas and to JSON lines, with the
malformed records a run asks for."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.events.simulation import (
    COUNTRIES,
    CURRENCIES,
    KIND_CODES,
    NO_SUCCESS,
    UNKNOWN_VALUES,
    Columns,
    Population,
    prefixed_ids,
)
from transformations import cleaning
from transformations.schemas import (
    ACTIVITY,
    ACTIVITY_TYPES,
    CHANNELS,
    CHARGEBACKS,
    SCHEMAS,
    TRANSACTIONS,
)


def arrow_schema(event_type: str, all_nullable: bool = False) -> pa.Schema:
    """The declared schema in Arrow (timestamps as UTC microseconds). ``all_nullable`` when
    malformed records are written: a missing field is a null in a required column."""
    schema = to_arrow_schema(SCHEMAS[event_type], timezone="UTC")
    if all_nullable:
        schema = pa.schema([f.with_nullable(True) for f in schema])
    return schema


def _timestamps(ms: np.ndarray) -> pa.Array:
    return pa.array(ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("us", tz="UTC"))


class TableBuilder:
    """Turns generated columns into Arrow tables of the declared schemas (and JSON lines)."""

    def __init__(self, population: Population, run_tag: str, all_nullable: bool):
        self.population = population
        self.run_tag = run_tag
        self.all_nullable = all_nullable
        self.countries = pa.array(COUNTRIES)
        self.currencies = pa.array(CURRENCIES)
        self.channels = pa.array(CHANNELS)
        self.activity_types = pa.array(ACTIVITY_TYPES)

    def _ids(self, letter: str, seq: np.ndarray) -> pa.Array:
        return prefixed_ids(f"{letter}{self.run_tag}-", seq, 9)

    def _devices(self, codes: np.ndarray) -> pa.Array:
        return prefixed_ids("d", codes, 8)

    def transactions(self, c: Columns) -> pa.Table:
        pop = self.population
        arrays = {
            "transaction_id": self._ids("t", c["seq"]),
            "user_id": pop.user_ids.take(c["user"]),
            "merchant_id": pop.merchant_ids.take(c["merchant"]),
            "amount": pa.array(c["amount"], pa.float64()),
            "currency": self.currencies.take(c["country"]),
            "country": self.countries.take(c["country"]),
            "device_id": self._devices(c["device"]),
            "channel": self.channels.take(c["channel"]),
            "event_time": _timestamps(c["time"]),
        }
        return self._table(TRANSACTIONS, arrays, c)

    def activity(self, c: Columns) -> pa.Table:
        pop = self.population
        success = c["success"]
        session = c["session"]
        arrays = {
            "event_id": self._ids("a", c["seq"]),
            "user_id": pop.user_ids.take(c["user"]),
            "activity_type": self.activity_types.take(c["kind"]),
            "success": pa.array(success == 1, pa.bool_(), mask=success == NO_SUCCESS),
            "session_id": self._ids("s", session),
            "device_id": self._devices(c["device"]),
            "country": self.countries.take(c["country"]),
            "event_time": _timestamps(c["time"]),
        }
        return self._table(ACTIVITY, arrays, c)

    def chargebacks(self, c: Columns) -> pa.Table:
        pop = self.population
        arrays = {
            "chargeback_id": self._ids("c", c["seq"]),
            "transaction_id": self._ids("t", c["transaction_seq"]),
            "user_id": pop.user_ids.take(c["user"]),
            "merchant_id": pop.merchant_ids.take(c["merchant"]),
            "transaction_time": _timestamps(c["transaction_time"]),
            "event_time": _timestamps(c["time"]),
        }
        return self._table(CHARGEBACKS, arrays, c)

    def _table(self, event_type: str, arrays: dict[str, pa.Array], c: Columns) -> pa.Table:
        schema = arrow_schema(event_type, self.all_nullable)
        if "malformed_kind" in c:  # a missing field: null where the value should be
            missing = c["malformed_kind"] == KIND_CODES[cleaning.MISSING_FIELD]
            for index, name in enumerate(schema.names):
                rows = missing & (c["malformed_column"] == index)
                if rows.any():
                    arrays[name] = pc.if_else(pa.array(rows), pa.scalar(None, arrays[name].type), arrays[name])
        return pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)

    # ------------------------------------------------------------------ JSON lines
    def json_lines(self, event_type: str, table: pa.Table, c: Columns, rng: np.random.Generator) -> bytes:
        """The table as JSON lines (UTF-8, one object per line), with the JSON-only defects.

        Built by one Arrow string join over all columns, not a Python loop per record:
        our values need no escaping (ids, codes, numbers, ISO times). A null in a
        required column (a missing field) drops the key; a null in a nullable column is
        written as null.
        """
        schema = SCHEMAS[event_type]
        parts: list = ["{"]
        for position, f in enumerate(schema.fields):
            key = ("" if position == 0 else ",") + f'"{f.name}":'
            values = table.column(f.name).combine_chunks()
            opening, text, closing = _json_value(values, f.dataType)
            if values.null_count == 0:
                parts += [key + opening, text, closing]
            else:
                piece = pc.binary_join_element_wise(key + opening, text, closing, "")
                parts.append(pc.fill_null(piece, f"{key}null" if f.nullable else ""))
        parts.append("}\n")
        lines = pc.binary_join_element_wise(*parts, "")

        kinds = c.get("malformed_kind")
        if kinds is not None:
            # Defects of the text itself, done per line in Python (they are few). A missing
            # first field left "{," behind: repaired on the same path.
            missing_first = (kinds == KIND_CODES[cleaning.MISSING_FIELD]) & (c["malformed_column"] == 0)
            text_defects = np.flatnonzero((kinds == KIND_CODES[cleaning.BROKEN_JSON])
                                          | (kinds == KIND_CODES[cleaning.WRONG_TYPE])
                                          | (kinds == KIND_CODES[cleaning.UNKNOWN_VALUE]) | missing_first)
            if len(text_defects):
                originals = lines.take(pa.array(text_defects)).to_pylist()
                replaced = [_corrupt_json(line[:-1].replace("{,", "{", 1), int(kinds[row]),
                                          int(c["malformed_column"][row]), schema, rng) + "\n"
                            for line, row in zip(originals, text_defects, strict=True)]
                mask = np.zeros(len(lines), dtype=bool)
                mask[text_defects] = True
                lines = pc.replace_with_mask(lines, pa.array(mask), pa.array(replaced, pa.string()))
        return _concatenated(lines)


def _json_value(values: pa.Array, data_type: T.DataType) -> tuple[str, pa.Array, str]:
    """(text before, the values as text, text after) of a column's JSON values."""
    if isinstance(data_type, T.StringType):
        return '"', values, '"'
    if isinstance(data_type, T.TimestampType):  # ISO-8601 with offset, millisecond precision
        # Arrow prints a zone-less timestamp as "2026-01-01 00:22:50.199" (the UTC wall
        # time here) ten times faster than strftime; only the "T" is missing.
        text = pc.replace_substring(pc.cast(values, pa.timestamp("ms")).cast(pa.string()), " ", "T")
        return '"', text, '+00:00"'
    return "", pc.cast(values, pa.string()), ""  # numbers and booleans print as JSON literals


def _corrupt_json(line: str, kind_code: int, column: int, schema: T.StructType, rng: np.random.Generator) -> str:
    kind = cleaning.REJECT_KINDS[kind_code]
    if kind == cleaning.MISSING_FIELD:
        return line  # already without the key
    if kind == cleaning.BROKEN_JSON:
        # A producer that died mid-write: the line stops before its closing brace.
        return line[: int(rng.integers(1, len(line) - 1))]
    record = json.loads(line)
    name = schema.names[column]
    if kind == cleaning.UNKNOWN_VALUE:
        record[name] = UNKNOWN_VALUES[name]
    elif name == "amount":
        record[name] = f"{record[name]:.2f}".replace(".", ",")   # "12,50": a locale bug
    elif name == "success":
        record[name] = "unknown"
    else:  # a timestamp in a local day-first format, without offset
        record[name] = dt.datetime.fromisoformat(record[name]).strftime("%d/%m/%Y %H:%M:%S")
    return json.dumps(record, separators=(",", ":"))


def _concatenated(lines: pa.Array) -> bytes:
    """All strings of an Arrow array back to back: its data buffer, no per-line Python."""
    if len(lines) == 0:
        return b""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset: lines.offset + len(lines) + 1]
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()
