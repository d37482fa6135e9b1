"""The streaming job's parts, a module per concern; the command is ``jobs/stream_features.py``
(``python -m jobs.stream_features``, ``tessera stream-features``), whose docstring maps them."""
