"""The declared schemas of the raw events: the contract between producers (the event
generator, Kafka, the landing zone), the batch job and the streaming job.

Timestamps are UTC instants (Spark ``TimestampType``; the Spark session runs in UTC).
JSON sources carry them as ISO-8601 strings with an offset, e.g.
``2026-03-29T01:30:00+01:00``; the reader converts them to instants, so a source in a
non-UTC zone (DST included) lands on the right UTC second.
"""
from pyspark.sql import types as T

# One name per event stream; also the sub-folder names in the history and landing zone.
TRANSACTIONS = "transactions"
ACTIVITY = "activity"
CHARGEBACKS = "chargebacks"
EVENT_TYPES = (TRANSACTIONS, ACTIVITY, CHARGEBACKS)

TRANSACTION_SCHEMA = T.StructType([
    T.StructField("transaction_id", T.StringType(), nullable=False),
    T.StructField("user_id", T.StringType(), nullable=False),
    T.StructField("merchant_id", T.StringType(), nullable=False),
    T.StructField("amount", T.DoubleType(), nullable=False),
    T.StructField("currency", T.StringType(), nullable=False),
    T.StructField("country", T.StringType(), nullable=False),
    T.StructField("device_id", T.StringType(), nullable=False),
    T.StructField("channel", T.StringType(), nullable=False),  # web | app | pos
    T.StructField("event_time", T.TimestampType(), nullable=False),
])

# activity_type: login | page_view | session_start.
# success is set for logins only; session_id ties page views to their session.
ACTIVITY_SCHEMA = T.StructType([
    T.StructField("event_id", T.StringType(), nullable=False),
    T.StructField("user_id", T.StringType(), nullable=False),
    T.StructField("activity_type", T.StringType(), nullable=False),
    T.StructField("success", T.BooleanType(), nullable=True),
    T.StructField("session_id", T.StringType(), nullable=True),
    T.StructField("device_id", T.StringType(), nullable=False),
    T.StructField("country", T.StringType(), nullable=False),
    T.StructField("event_time", T.TimestampType(), nullable=False),
])

# A chargeback is the (late) fraud label of one transaction; event_time is when the
# chargeback arrived, transaction_time when the disputed transaction happened.
CHARGEBACK_SCHEMA = T.StructType([
    T.StructField("chargeback_id", T.StringType(), nullable=False),
    T.StructField("transaction_id", T.StringType(), nullable=False),
    T.StructField("user_id", T.StringType(), nullable=False),
    T.StructField("merchant_id", T.StringType(), nullable=False),
    T.StructField("transaction_time", T.TimestampType(), nullable=False),
    T.StructField("event_time", T.TimestampType(), nullable=False),
])

SCHEMAS = {TRANSACTIONS: TRANSACTION_SCHEMA, ACTIVITY: ACTIVITY_SCHEMA, CHARGEBACKS: CHARGEBACK_SCHEMA}

# The id of one event of each type and the entity the event belongs to: a repeated
# (entity, id) is a double delivery (``cleaning.drop_duplicate_events``).
EVENT_ID_COLUMNS = {TRANSACTIONS: "transaction_id", ACTIVITY: "event_id", CHARGEBACKS: "chargeback_id"}
EVENT_ENTITY_COLUMNS = {TRANSACTIONS: "user_id", ACTIVITY: "user_id", CHARGEBACKS: "merchant_id"}

ACTIVITY_TYPES = ("login", "page_view", "session_start")
CHANNELS = ("web", "app", "pos")
# ISO 4217 codes the platform accepts in transactions.currency.
CURRENCIES = ("AUD", "BRL", "CAD", "CHF", "DKK", "EUR", "GBP", "INR", "JPY", "NOK", "PLN", "SEK", "USD")

# The values a column may take, per event type: any other value is malformed
# (``unknown_value:<column>`` in cleaning) and a 422 in the API's /v1/predict.
ALLOWED_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    TRANSACTIONS: {"currency": CURRENCIES, "channel": CHANNELS},
    ACTIVITY: {"activity_type": ACTIVITY_TYPES},
    CHARGEBACKS: {},
}
