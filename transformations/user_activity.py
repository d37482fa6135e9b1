"""User activity features: one row per (user_id, instant of the user's activity events).

Window semantics: the package docstring. Per window W in 1h, 24h, over the user's
activity events in ``(t - W, t]`` (all bigint):

* ``logins_W``: login attempts, successful or not;
* ``failed_logins_W``: logins with ``success`` false (a login with unknown success is an
  attempt, not a failure);
* ``page_views_W``: page views;
* ``sessions_W``: sessions started (``session_start`` events). Counting starts rather
  than distinct ``session_id`` keeps a session in the window it began in, whatever its
  later page views do.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from transformations import cleaning, windows
from transformations.windows import EVENT_TIME, EVENT_TIMESTAMP

USER_ID = "user_id"

COLUMNS = [
    USER_ID, EVENT_TIMESTAMP,
    "logins_1h", "logins_24h",
    "failed_logins_1h", "failed_logins_24h",
    "page_views_1h", "page_views_24h",
    "sessions_1h", "sessions_24h",
]


def user_activity_features(activity: DataFrame) -> DataFrame:
    """The user activity feature table of ``activity`` (``ACTIVITY_SCHEMA``)."""
    events = windows.with_event_micros(cleaning.drop_duplicate_events(  # a replayed event counts once
        activity.select(
            F.col("event_id"),
            F.col(USER_ID),
            F.col("activity_type"),
            F.col("success"),
            F.col(EVENT_TIME),
        ),
        USER_ID, "event_id"))
    trailing = {"1h": windows.WINDOW_1H, "24h": windows.WINDOW_24H}
    is_login = F.col("activity_type") == "login"
    is_failed_login = is_login & (F.col("success") == F.lit(False))
    is_page_view = F.col("activity_type") == "page_view"
    is_session_start = F.col("activity_type") == "session_start"

    per_event = events.select(
        F.col(USER_ID),
        F.col(EVENT_TIME).alias(EVENT_TIMESTAMP),
        windows.last_of_instant(USER_ID),
        *[windows.count_in_last(is_login, USER_ID, w).alias(f"logins_{name}") for name, w in trailing.items()],
        *[windows.count_in_last(is_failed_login, USER_ID, w).alias(f"failed_logins_{name}")
          for name, w in trailing.items()],
        *[windows.count_in_last(is_page_view, USER_ID, w).alias(f"page_views_{name}") for name, w in trailing.items()],
        *[windows.count_in_last(is_session_start, USER_ID, w).alias(f"sessions_{name}")
          for name, w in trailing.items()],
    )
    return windows.one_row_per_instant(per_event).select(*COLUMNS)
