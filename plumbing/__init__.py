"""Shared plumbing: configuration, Spark sessions, local services, lake tables,
online store, tracking. Imported by jobs/, serving/ and feature_repo/; imports
transformations/ only (tests/test_layers.py checks every layer, function-level imports too)."""
import os

# MLflow's client reports usage to its vendor's host as soon as it is imported. Nothing of
# this project may address a host its profile does not name, so every entry point (they
# all import plumbing first) turns that off, unless the user decides otherwise.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
