"""How the stream runs, from its command line."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path


@dataclass(frozen=True)
class StreamSettings:
    """How the stream runs: command-line arguments (a ``streaming:`` config section later)."""

    checkpoint_location: Path
    allowed_lateness: timedelta = timedelta(seconds=60)
    trigger_interval: timedelta = timedelta(seconds=0.5)
    available_now: bool = False        # process what has landed in as many micro-batches as needed, then stop
    max_files_per_trigger: int | None = None  # per event folder (source files); None: all new files
    max_records_per_trigger: int | None = None  # per topic (source kafka); None: all new records
    max_future: timedelta = timedelta(minutes=5)
    max_failures: int = 10
