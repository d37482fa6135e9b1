"""`tessera ingest` on a card export in a foreign shape, with the docs' example mapping, on real
Spark, real Parquet and Delta files and the profile's real MLflow; and its bad input, each a test:
a clear message and nothing written, or dead letters, and nothing landed before is lost."""
from __future__ import annotations

import os

import mlflow
import pytest
from pyspark.sql import functions as F

from jobs import ingest
from plumbing.config import REPO_ROOT, load_config
from plumbing.event_tables import dead_letter_table
from plumbing.raw_events import history_uri, read_history
from plumbing.training_sets import FRAUD_LABELS

MAPPING = REPO_ROOT / "docs" / "examples" / "ingest_transactions.yaml"
HEADER = "txn_ref,card_number,merchant_name,amount_eur,category,booked_at,terminal,country_code,fraud"
# Naive local times in Europe/Berlin across the night the clocks went forward (2026-03-29,
# 02:00 CET -> 03:00 CEST): 01:30 is UTC+1, 03:30 is UTC+2, and 02:30, which that night
# skips, is read as 03:30 (docs/your_own_events.md says so). Card numbers as ids; merchant
# names quoted, with commas; a fraud flag (9003), the label source of `train --labels flag`.
EXPORT = [
    '9001,4111111111111111,"Café Müller, Berlin",12.50,food_net,28.03.2026 23:50:00,T-17,DE,0',
    '9002,4111111111111111,"Bäckerei Schmidt, Hamburg",3.20,bakery,29.03.2026 01:30:00,T-17,DE,0',
    '9003,5500000000000004,"Online Shop, GmbH & Co. KG",99.99,retail_net,29.03.2026 03:30:00,T-03,DE,1',
    '9004,5500000000000004,Kiosk,7,kiosk,29.03.2026 12:00:00,T-03,AT,',
    '9000,4111111111111111,"Tankstelle, A7",45.00,fuel,29.03.2026 02:30:00,T-09,DE,0',
]
EXPECTED_UTC = {"9001": "2026-03-28 22:50:00", "9002": "2026-03-29 00:30:00",
                "9003": "2026-03-29 01:30:00", "9004": "2026-03-29 10:00:00", "9000": "2026-03-29 01:30:00"}


@pytest.fixture
def cfg(local_services, tmp_path, monkeypatch):
    """The local profile's services, a lake and history of the test's own (main() reads the
    same settings from the environment)."""
    monkeypatch.setenv("TESSERA__LAKE__ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("TESSERA__EVENTS__HISTORY_URI", str(tmp_path / "history"))
    return load_config("local")


def _export(tmp_path, rows, name="export.csv", header=HEADER):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in [header, *rows]) if header is not None else "",
                    encoding="utf-8")
    return str(path)


def _ingest(cfg, spark, path, mapping=MAPPING, max_reject_fraction=1.0):
    """In-process, without the reject limit by default: one bad row of a six-row export is
    above any sensible share (the limit has a test of its own)."""
    return ingest.run(cfg, "transactions", path, ingest.load_mapping(str(mapping), "transactions"), "csv",
                      spark=spark, max_reject_fraction=max_reject_fraction)


def _landed(cfg, spark):
    return {row.transaction_id: row for row in read_history(spark, cfg, "transactions")
            .withColumn("utc", F.date_format("event_time", "yyyy-MM-dd HH:mm:ss")).collect()}


def _dead_letters(cfg, spark):
    return {(row.reject_reason, row.raw) for row in dead_letter_table(cfg, "transactions", "ingest").read(spark)
            .collect()}


def _history_files(cfg, folder="transactions"):
    from pathlib import Path
    return sorted(str(p.relative_to(history_uri(cfg, folder)))
                  for p in Path(history_uri(cfg, folder)).rglob("*.parquet"))


def _flags(spark, cfg):
    """The landed fraud flags: transaction id -> is_fraud."""
    return {row.transaction_id: row.is_fraud for row in spark.read.parquet(history_uri(cfg, FRAUD_LABELS)).collect()}


def _mapping_line(key):
    return next(number for number, line in enumerate(MAPPING.read_text().splitlines(), start=1)
                if line.startswith(f"  {key}:"))


def _main(cfg, argv, capsys):
    code = ingest.main(["--profile", "local", *argv])
    return code, capsys.readouterr()


# ------------------------------------------------------------------ the worked example
def test_an_export_in_a_foreign_shape_lands_with_utc_instants_and_string_ids(cfg, spark, tmp_path, capsys):
    code, out = _main(cfg, ["transactions", _export(tmp_path, EXPORT), "--mapping", str(MAPPING)], capsys)
    assert code == 0, out.err
    landed = _landed(cfg, spark)
    assert {tid: row.utc for tid, row in landed.items()} == EXPECTED_UTC
    assert landed["9001"].user_id == "4111111111111111"  # the card number, as text
    assert landed["9001"].merchant_id == "Café Müller, Berlin"
    assert landed["9003"].merchant_id == "Online Shop, GmbH & Co. KG"
    assert {tid: row.channel for tid, row in landed.items()} == {"9001": "web", "9002": "pos", "9003": "web",
                                                                "9004": "pos", "9000": "pos"}
    assert landed["9004"].amount == 7.0 and landed["9004"].currency == "EUR" and landed["9004"].country == "AT"
    # Filed by the UTC date: 23:50 local on the 28th is the 28th in UTC, 01:30 local on the 29th is the 29th.
    assert [f.split("/")[0] for f in _history_files(cfg)] == ["date=2026-03-28", "date=2026-03-29"]
    # The fraud flag lands beside the history, one row per transaction (an empty cell: not flagged).
    assert _flags(spark, cfg) == {"9001": False, "9002": False, "9003": True, "9004": False, "9000": False}
    assert len(_history_files(cfg, FRAUD_LABELS)) == 2
    assert "rows landed   5" in out.out and "rows rejected 0" in out.out
    assert "fraud flags   1 of 5 landed transactions flagged (2 label file(s) written" in out.out
    assert "time range    2026-03-28 22:50:00 .. 2026-03-29 10:00:00 (UTC)" in out.out
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).search_runs(
        [mlflow.get_experiment_by_name("tessera/feature-tables").experiment_id],
        filter_string="tags.table = 'ingest.transactions'", order_by=["start_time DESC"], max_results=1)[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rows_landed"] == 5 and run.data.metrics["validation_success"] == 1.0
    assert run.data.metrics["distinct_user_id"] == 2 and run.data.metrics["distinct_merchant_id"] == 5
    assert run.data.tags["validation_suite"] == "raw_events.transactions"


def test_reingesting_the_same_file_adds_nothing(cfg, spark, tmp_path):
    path = _export(tmp_path, [*EXPORT, '9005,4111111111111111,Kiosk,-1.00,kiosk,29.03.2026 13:00:00,T-03,DE,0'])
    first = _ingest(cfg, spark, path)
    files, dead = _history_files(cfg), _dead_letters(cfg, spark)
    again = _ingest(cfg, spark, path)
    assert again.import_id == first.import_id
    assert again.files_written == [] and len(again.files_already_there) == len(first.files_written) == 2
    assert again.dead_letters_written == 0 and first.dead_letters_written == 1
    assert _history_files(cfg) == files
    assert len(_landed(cfg, spark)) == 5 and read_history(spark, cfg, "transactions").count() == 5
    assert dead_letter_table(cfg, "transactions", "ingest").read(spark).count() == 1 == len(dead)
    # The same rows in another order are the same import; other rows are another import.
    reordered = _ingest(cfg, spark, _export(tmp_path, reversed(_rows(path)), "reordered.csv"))
    assert reordered.import_id == first.import_id and reordered.files_written == []
    other = _ingest(cfg, spark, _export(tmp_path, EXPORT[:3], "fewer.csv"))
    assert other.import_id != first.import_id and len(other.files_written) == 2


# ------------------------------------------------------------------ bad input
def test_a_wrong_delimiter_is_refused_naming_the_column_and_nothing_is_written(cfg, spark, tmp_path, capsys):
    rows = [line.replace(",", ";") for line in EXPORT if '"' not in line]
    code, out = _main(cfg, ["transactions", _export(tmp_path, rows, header=HEADER.replace(",", ";")),
                            "--mapping", str(MAPPING)], capsys)
    assert code == 2
    message = out.err.strip().splitlines()[-1]
    assert f"no column 'txn_ref' in the input, named by {MAPPING}, line {_mapping_line('transaction_id')}, " \
           f"key 'transaction_id'" in message
    assert "is the delimiter right?" in message
    assert _history_files(cfg) == [] and not dead_letter_table(cfg, "transactions", "ingest").exists()


def test_a_missing_required_column_names_it_and_the_mapping_key(cfg, spark, tmp_path, capsys):
    header = HEADER.replace(",terminal", "")
    rows = [line.replace(",T-17", "").replace(",T-03", "") for line in EXPORT]
    code, out = _main(cfg, ["transactions", _export(tmp_path, rows, header=header), "--mapping", str(MAPPING)],
                      capsys)
    assert code == 2
    message = out.err.strip().splitlines()[-1]
    assert message.startswith("ingest: no column 'terminal' in the input")
    assert f"line {_mapping_line('device_id')}, key 'device_id'" in message
    assert _history_files(cfg) == [] and not dead_letter_table(cfg, "transactions", "ingest").exists()


def test_an_expression_naming_a_missing_column_names_it_and_the_mapping_key(cfg, spark, tmp_path, capsys):
    header = HEADER.replace(",category", "")
    rows = [",".join(part for i, part in enumerate(_split(line)) if i != 4) for line in EXPORT]
    code, out = _main(cfg, ["transactions", _export(tmp_path, rows, header=header), "--mapping", str(MAPPING)],
                      capsys)
    assert code == 2
    message = out.err.strip().splitlines()[-1]
    assert "no column `category` in the input" in message
    assert f"line {_mapping_line('channel')}, key 'channel'" in message
    assert _history_files(cfg) == []


def test_a_time_that_does_not_parse_in_the_format_is_a_wrong_type_dead_letter(cfg, spark, tmp_path):
    bad = '9005,4111111111111111,Kiosk,5.00,kiosk,2026-03-29 13:00,T-03,DE,0'
    result = _ingest(cfg, spark, _export(tmp_path, [*EXPORT, bad]))
    assert result.rows_read == 6 and result.rows_landed == 5
    assert result.rejected == {"wrong_type:event_time": 1}
    [(reason, raw)] = _dead_letters(cfg, spark)
    assert reason == "wrong_type:event_time"
    assert '"booked_at":"2026-03-29 13:00"' in raw and '"txn_ref":"9005"' in raw  # the row as it was read
    assert set(_landed(cfg, spark)) == set(EXPECTED_UTC)


def test_negative_and_non_numeric_amounts_are_dead_letters(cfg, spark, tmp_path):
    negative = '9005,4111111111111111,Kiosk,-5.00,kiosk,29.03.2026 13:00:00,T-03,DE,0'
    decimal_comma = '9006,4111111111111111,Kiosk,"12,50",kiosk,29.03.2026 13:05:00,T-03,DE,0'
    odd_flag = '9007,4111111111111111,Kiosk,1.00,kiosk,29.03.2026 13:10:00,T-03,DE,maybe'  # no boolean
    result = _ingest(cfg, spark, _export(tmp_path, [*EXPORT, negative, decimal_comma, odd_flag]))
    assert result.rejected == {"negative_amount": 1, "wrong_type:amount": 1, "wrong_type:fraud_flag": 1}
    dead = dict(_dead_letters(cfg, spark))
    assert '"amount_eur":"-5.00"' in dead["negative_amount"]
    assert '"amount_eur":"12,50"' in dead["wrong_type:amount"]
    assert set(_landed(cfg, spark)) == set(EXPECTED_UTC)


@pytest.mark.parametrize("header", [None, HEADER], ids=["empty file", "header only"])
def test_an_empty_file_is_refused_and_nothing_is_written(cfg, spark, tmp_path, capsys, header):
    code, out = _main(cfg, ["transactions", _export(tmp_path, [], header=header), "--mapping", str(MAPPING)],
                      capsys)
    assert code == 2
    assert "has no data" in out.err.strip().splitlines()[-1]
    assert _history_files(cfg) == [] and not dead_letter_table(cfg, "transactions", "ingest").exists()


def test_nothing_already_landed_is_lost_when_a_later_ingest_fails(cfg, spark, tmp_path, capsys):
    _ingest(cfg, spark, _export(tmp_path, EXPORT))
    before, files = _landed(cfg, spark), _history_files(cfg)
    # A later export of the same days: refused by its mapping (a missing column) ...
    header = HEADER.replace(",terminal", "")
    later = ['9101,4111111111111111,Kiosk,1.00,kiosk,29.03.2026 14:00:00,DE,0']
    code, _ = _main(cfg, ["transactions", _export(tmp_path, later, "later.csv", header=header),
                          "--mapping", str(MAPPING)], capsys)
    assert code == 2
    # ... and one that fails validation (an amount above the suite's maximum): nothing of it lands.
    huge = ['9102,4111111111111111,Kiosk,5000000,kiosk,29.03.2026 14:00:00,T-03,DE,0']
    code, out = _main(cfg, ["transactions", _export(tmp_path, huge, "huge.csv"), "--mapping", str(MAPPING)], capsys)
    assert code == 1 and "validation failed, nothing landed" in out.err
    assert _history_files(cfg) == files
    assert {tid: row.asDict() for tid, row in _landed(cfg, spark).items()} == \
           {tid: row.asDict() for tid, row in before.items()}


def test_more_rejects_than_the_limit_land_nothing_but_file_their_dead_letters(cfg, spark, tmp_path, capsys):
    """One bad row in six is 16.7 %, above the default limit of 5 %: exit 1 naming the share, the
    limit and the reasons; the dead letters are filed; with a higher limit the same file lands
    (its dead letters are not filed twice)."""
    bad = ['9005,4111111111111111,Kiosk,-5.00,kiosk,29.03.2026 13:00:00,T-03,DE,0']
    path = _export(tmp_path, [*EXPORT, *bad])
    code, out = _main(cfg, ["transactions", path, "--mapping", str(MAPPING)], capsys)
    assert code == 1
    message = out.err.strip().splitlines()[-1]
    assert message.startswith(f"ingest: too many rows rejected: 1 of 6 rows of {path} rejected (16.7%), above the "
                              f"limit of 5.0% (--max-reject-fraction): nothing landed. Reasons: negative_amount 1")
    assert "ingest_dead_letter_transactions (import_id " in message
    assert _history_files(cfg) == [] and _history_files(cfg, FRAUD_LABELS) == []
    assert [reason for reason, _ in _dead_letters(cfg, spark)] == ["negative_amount"]
    code, out = _main(cfg, ["transactions", path, "--mapping", str(MAPPING), "--max-reject-fraction", "0.2"], capsys)
    assert code == 0, out.err
    assert set(_landed(cfg, spark)) == set(EXPECTED_UTC)
    assert dead_letter_table(cfg, "transactions", "ingest").read(spark).count() == 1


def test_columns_the_export_lacks_or_leaves_empty_get_the_documented_defaults(cfg, spark, tmp_path, capsys):
    """No terminal, no channel, no currency; one empty country: device_id and country get their
    built-in defaults, channel and currency the mapping's; the summary says what they mean."""
    header = "ref,card,shop,value,when,country"
    rows = ["1,c1,s1,5.0,2026-03-29T10:00:00Z,DE", "2,c1,s2,6.0,2026-03-29T11:00:00Z,",
            "3,c2,s1,7.0,2026-03-29T12:00:00Z,FR"]
    mapping = tmp_path / "sparse.yaml"
    mapping.write_text("columns:\n  transaction_id: ref\n  user_id: card\n  merchant_id: shop\n  amount: value\n"
                       "  country: country\n  event_time: when\ndefaults:\n  currency: EUR\n  channel: pos\n")
    code, out = _main(cfg, ["transactions", _export(tmp_path, rows, "sparse.csv", header=header),
                            "--mapping", str(mapping)], capsys)
    assert code == 0, out.err
    landed = _landed(cfg, spark)
    assert {tid: (row.device_id, row.country, row.channel, row.currency) for tid, row in landed.items()} == {
        "1": ("unknown", "DE", "pos", "EUR"), "2": ("unknown", "ZZ", "pos", "EUR"),
        "3": ("unknown", "FR", "pos", "EUR")}
    assert "default       device_id: 3 row(s) without one got 'unknown': no feature reads it" in out.out
    assert "default       country: 1 row(s) without one got 'ZZ': txn_distinct_countries_24h counts it" in out.out
    assert "default       channel: 3 row(s) without one got 'pos': the model's channel input" in out.out
    assert "fraud flags" not in out.out  # no fraud_flag: in the mapping, no labels
    assert _history_files(cfg, FRAUD_LABELS) == []


def test_a_required_column_without_an_entry_or_a_default_is_refused_naming_both_ways(tmp_path):
    mapping = tmp_path / "no_channel.yaml"
    mapping.write_text("columns:\n  transaction_id: ref\n  user_id: card\n  merchant_id: shop\n  amount: value\n"
                       "  currency: {constant: EUR}\n  event_time: when\n")
    with pytest.raises(ingest.IngestError, match=r"no entry for the required column\(s\) channel of transactions: "
                                                 r"map each under columns:, or, .* under defaults:"):
        ingest.load_mapping(str(mapping), "transactions")
    # An activity export without sessions, devices or countries needs no entry for them.
    activity = tmp_path / "activity.yaml"
    activity.write_text("columns:\n  event_id: id\n  user_id: card\n  activity_type: {constant: login}\n"
                        "  event_time: when\n")
    loaded = ingest.load_mapping(str(activity), "activity")
    assert loaded.defaults == {"device_id": "unknown", "country": "ZZ"} and "session_id" not in loaded.columns
    flagged = tmp_path / "flagged.yaml"
    flagged.write_text(activity.read_text() + "fraud_flag: fraud\n")
    with pytest.raises(ingest.IngestError, match=r"line 6: a fraud_flag belongs to transactions"):
        ingest.load_mapping(str(flagged), "activity")


def _rows(path):
    return open(path, encoding="utf-8").read().splitlines()[1:]


def _split(line):
    """A CSV line's fields (the quoted ones keep their quotes)."""
    import csv
    import io
    return [f'"{field}"' if "," in field else field for field in next(csv.reader(io.StringIO(line)))]


# ------------------------------------------------------------------ the worked example, all the way
# A card export of the generator's transactions in the foreign shape (Berlin local times, the
# fraud flag where a chargeback came), with EXPORT's cards added; no activity, no chargebacks.
WORKED_START, WORKED_DAYS, LABEL_DELAY_DAYS = "2026-03-20", 10, 2


def _foreign_export(spark, cfg, tmp_path):
    """The generated transactions as the card export of the docs' mapping; returns its path and
    the flagged transaction ids."""
    chargebacks = {row.transaction_id for row in read_history(spark, cfg, "chargebacks").collect()}
    rows = (read_history(spark, cfg, "transactions")
            .select("transaction_id", "user_id", "merchant_id", "amount", "channel", "device_id", "country",
                    F.date_format(F.from_utc_timestamp("event_time", "Europe/Berlin"),
                                  "dd.MM.yyyy HH:mm:ss").alias("local"))
            .orderBy("transaction_id").collect())
    lines = [f"{r.transaction_id},{r.user_id},{r.merchant_id},{r.amount!r},shop{'_net' if r.channel == 'web' else ''},"
             f"{r.local},{r.device_id},{r.country},{int(r.transaction_id in chargebacks)}" for r in rows]
    return _export(tmp_path, [*lines, *EXPORT], "cards.csv"), chargebacks & {r.transaction_id for r in rows}


def test_the_worked_example_ingest_batch_features_and_train_from_the_fraud_flag(cfg, spark, tmp_path, capsys):
    """Issue 16's worked example: a foreign-shaped export (other names, naive local times across
    the DST change, numeric card ids, quoted merchants with commas, a fraud flag) is ingested with
    the docs' mapping; the batch job computes the cards' features (checked by hand below); a model
    trains on the fraud flags as labels, known LABEL_DELAY_DAYS after each transaction. There is
    no activity and no chargeback: the model trains without their tables, said once."""
    import shutil
    import uuid
    from datetime import datetime, timezone

    from jobs import batch_features, generate_events, train_model
    from plumbing.lake import LakeTable

    assert generate_events.main(["history", "--out", cfg.events.history_uri, "--profile", "local",
                                 "--events", "3000", "--days", str(WORKED_DAYS), "--start-date", WORKED_START,
                                 "--fraud-rate", "0.1", "--partition-by-date", "--no-progress", "--seed", "5"]) == 0
    export, flagged = _foreign_export(spark, cfg, tmp_path)
    for event_type in ("transactions", "activity", "chargebacks"):
        shutil.rmtree(history_uri(cfg, event_type))
    code, out = _main(cfg, ["transactions", export, "--mapping", str(MAPPING)], capsys)
    assert code == 0, out.err
    assert "rows rejected 0" in out.out
    # No activity history: its table is skipped, said once, and the transactions' table computes.
    code = batch_features.main(["--profile", "local", "--start", WORKED_START, "--end", "2026-03-30",
                                "--now", "2026-03-30T00:00:00+00:00", "--no-online",
                                "--tables", "user_transaction_features,user_activity_features"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.count("no activity history") == 1 and "skipping user_activity_features" in printed.out
    features = (LakeTable.for_config(cfg, "user_transaction_features", time_column="event_timestamp").read(spark)
                .where(F.col("user_id").isin("4111111111111111", "5500000000000004"))
                .withColumn("at", F.date_format("event_timestamp", "yyyy-MM-dd HH:mm:ss")))
    rows = {(row.user_id, row.at): row for row in features.collect()}
    assert set(rows) == {("4111111111111111", EXPECTED_UTC[t]) for t in ("9001", "9002", "9000")} | \
                        {("5500000000000004", EXPECTED_UTC[t]) for t in ("9003", "9004")}
    # 9001 at 22:50 UTC (23:50 CET), 9002 at 00:30 UTC, 9000 at 01:30 UTC (02:30 local, skipped by DST).
    second = rows[("4111111111111111", "2026-03-29 00:30:00")]
    assert (second.txn_count_24h, second.txn_amount_sum_24h) == (2, pytest.approx(15.70))
    third = rows[("4111111111111111", "2026-03-29 01:30:00")]
    assert (third.txn_count_24h, third.txn_amount_sum_24h, third.txn_lifetime_count) == (3, pytest.approx(60.70), 3)
    assert third.txn_distinct_merchants_24h == 3 and third.txn_amount_max_24h == pytest.approx(45.0)
    assert third.txn_seconds_since_prev == 3600.0  # 00:30 -> 01:30 UTC: one hour, though two on the clock
    last = rows[("5500000000000004", "2026-03-29 10:00:00")]
    assert (last.txn_count_24h, last.txn_amount_sum_24h, last.txn_distinct_countries_24h) == \
           (2, pytest.approx(106.99), 2)
    assert last.txn_amount_mean_24h == pytest.approx(53.495)

    capsys.readouterr()
    model_name = f"test-ingest-{uuid.uuid4().hex[:8]}"
    code = train_model.main(["--profile", "local", "--labels", "flag", "--label-delay-days", str(LABEL_DELAY_DAYS),
                             "--holdout-days", "2", "--experiment", "tessera-tests/fraud-model",
                             "--model-name", model_name])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "labels from ingested fraud flags, known 2 days after the transaction" in out.out
    for table in ("user_activity_features", "merchant_features"):
        assert out.out.count(f"train-model: {table} is not in the lake") == 1
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(client.get_model_version(model_name, "1").run_id)
    # The default range: after the warm-up day, up to the history's end less the flags' delay.
    assert (run.data.params["start"], run.data.params["end"]) == ("2026-03-21", "2026-03-28")
    assert run.data.params["label_source"] == "flag" and float(run.data.params["label_maturity_days"]) == 2
    assert run.data.tags["tables_not_in_lake"] == "user_activity_features,merchant_features"
    assert "txn_count_24h" in run.data.params["model_inputs"]
    # Every flagged transaction of the range is a positive, and only those.
    start, end = datetime(2026, 3, 21, tzinfo=timezone.utc), datetime(2026, 3, 28, tzinfo=timezone.utc)
    in_range = {row.transaction_id for row in read_history(spark, cfg, "transactions", start, end)
                .where((F.col("event_time") >= F.lit(start)) & (F.col("event_time") < F.lit(end))).collect()}
    positives = run.data.metrics["train_positives"] + run.data.metrics["holdout_positives"]
    assert positives == len(flagged & in_range) > 0
    assert run.data.metrics["train_rows"] + run.data.metrics["holdout_rows"] == len(in_range)
    client.delete_registered_model(model_name)


# ------------------------------------------------------------------ the other formats
FOREIGN_MAPPING = """\
time_zone: Europe/Berlin
columns:
  transaction_id: ref
  user_id: card
  merchant_id: shop
  amount: value
  currency: {constant: EUR}
  country: {constant: DE}
  device_id: {constant: unknown}
  channel: {constant: pos}
  event_time: local_time
"""


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parquet_and_json_lines_with_numeric_ids_and_naive_times(cfg, spark, tmp_path, fmt):
    """Parquet: integer ids, a time without a zone (timestamp_ntz); JSON lines: numbers as ids,
    ISO times without an offset. Both in Berlin time, across the change."""
    from datetime import datetime

    from pyspark.sql import types as T

    rows = [(4111111111111111, 17, 12.5, datetime(2026, 3, 29, 1, 30)),
            (4111111111111112, 17, 3.0, datetime(2026, 3, 29, 3, 30))]
    path = tmp_path / f"export.{fmt}"
    if fmt == "parquet":
        schema = T.StructType([T.StructField("card", T.LongType()), T.StructField("shop", T.IntegerType()),
                               T.StructField("value", T.DoubleType()),
                               T.StructField("local_time", T.TimestampNTZType())])
        (spark.createDataFrame(rows, schema).withColumn("ref", F.col("card") % 1000)
         .coalesce(1).write.parquet(str(path)))
    else:
        path.write_text("".join(f'{{"ref": {card % 1000}, "card": {card}, "shop": {shop}, "value": {value}, '
                                f'"local_time": "{time.isoformat()}"}}\n' for card, shop, value, time in rows))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(FOREIGN_MAPPING)
    result = ingest.run(cfg, "transactions", str(path), ingest.load_mapping(str(mapping), "transactions"),
                        fmt, spark=spark)
    assert result.rows_landed == 2 and result.rejected == {}
    landed = _landed(cfg, spark)
    assert {tid: (row.user_id, row.merchant_id, row.utc) for tid, row in landed.items()} == {
        "111": ("4111111111111111", "17", "2026-03-29 00:30:00"),
        "112": ("4111111111111112", "17", "2026-03-29 01:30:00")}


def test_duplicate_ids_with_different_contents_are_reported(cfg, spark, tmp_path, capsys):
    twice = EXPORT[0]  # the same row again
    changed = EXPORT[1].replace(",3.20,", ",4.20,")  # the same id, another amount
    code, out = _main(cfg, ["transactions", _export(tmp_path, [*EXPORT, twice, changed]), "--mapping", str(MAPPING)],
                      capsys)
    assert code == 0, out.err
    assert "duplicate ids 2 delivered more than once, 1 of them with differing rows" in out.out
    assert read_history(spark, cfg, "transactions").count() == 7  # landed as delivered: the batch job dedupes


def test_a_wrong_encoding_is_reported_and_the_mapping_s_encoding_reads_it(cfg, spark, tmp_path, capsys):
    path = tmp_path / "latin1.csv"
    path.write_bytes("".join(f"{line}\n" for line in [HEADER, *EXPORT]).encode("latin-1"))
    code, out = _main(cfg, ["transactions", str(path), "--mapping", str(MAPPING)], capsys)
    assert code == 0, out.err
    assert "encoding      2 row(s) hold bytes the encoding could not decode" in out.out  # Café Müller, Bäckerei
    assert "\ufffd" in _landed(cfg, spark)["9001"].merchant_id
    mapping = tmp_path / "latin1.yaml"
    mapping.write_text(MAPPING.read_text().replace('  sep: ","', '  sep: ","\n  encoding: ISO-8859-1'))
    code, out = _main(cfg, ["transactions", str(path), "--mapping", str(mapping)], capsys)
    assert code == 0, out.err
    assert "encoding " not in out.out
    assert "Café Müller, Berlin" in {row.merchant_id for row in read_history(spark, cfg, "transactions").collect()}


# ------------------------------------------------------------------ S3 and globs
def test_a_glob_of_exports_on_s3_lands_in_an_s3_history(s3_services, spark):
    """The s3 profile: two parts of the export under s3:// read through one glob, landed in the
    profile's S3 history (a prefix of this test's own) by the same moves as on a local disk."""
    import uuid

    from plumbing.s3 import s3_client

    prefix = f"tests/ingest-{uuid.uuid4().hex[:8]}"
    bucket = s3_services.s3.buckets[0]
    cfg = load_config("s3", environ={**os.environ,
                                     "TESSERA__EVENTS__HISTORY_URI": f"s3a://{bucket}/{prefix}/history",
                                     "TESSERA__LAKE__ROOT": f"s3a://{bucket}/{prefix}/lake"})
    client = s3_client(cfg)
    for number, rows in enumerate([EXPORT[:2], EXPORT[2:]]):
        body = "".join(f"{line}\n" for line in [HEADER, *rows]).encode()
        client.put_object(Bucket=bucket, Key=f"{prefix}/exports/part-{number}.csv", Body=body)
    result = _ingest(cfg, spark, f"s3://{bucket}/{prefix}/exports/part-*.csv")
    assert result.rows_landed == 5 and len(result.files_written) == 2
    assert {tid: row.utc for tid, row in _landed(cfg, spark).items()} == EXPECTED_UTC
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/history/")["Contents"]}
    assert {key.rsplit("/", 2)[1] for key in keys if key.endswith(".parquet")} == {"date=2026-03-28", "date=2026-03-29"}
    assert _ingest(cfg, spark, f"s3://{bucket}/{prefix}/exports/part-*.csv").files_written == []
