"""The Feast repository of the project, generated from ``transformations.catalog``.

* ``entities.py``: user, merchant (string ids).
* ``data_sources.py``: each feature table's Delta table in the lake, behind a push source.
* ``feature_views.py``: one feature view per catalog table, with its ttl.
* ``feature_services.py``: ``fraud_model_v1`` (every feature of the three tables), and
  its feature references for readers that do without Feast (the API).
* ``delta_offline_store.py``: Feast's DuckDB offline store reading Delta via deltalake.
* ``definitions.py``: the one module ``feast apply`` scans (``.feastignore`` hides the
  others, which it imports), built for the profile in ``$TESSERA_PROFILE``.

``feature_store.yaml`` is generated from the profile by ``plumbing.feast_repo`` into
``<data_dir>/feast/`` (never committed: it holds the Redis password). From the command
line::

    python -m plumbing.feast_repo apply --profile local
    python -m plumbing.feast_repo materialize --profile local
    python -m plumbing.feast_repo serve --profile local --port 6566

or Feast's own CLI on the generated file::

    TESSERA_PROFILE=local feast -c feature_repo -f .tessera/local/feast/feature_store.yaml apply
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from plumbing.config import Config


def repo_objects(cfg: Config) -> list[Any]:
    """Every Feast object of the repository for the profile ``cfg``."""
    # Imported here, not above: importing feature_repo.feature_services for its feature
    # references must not cost feast's 5 s import.
    from feature_repo.entities import merchant, user
    from feature_repo.feature_services import feature_services
    from feature_repo.feature_views import feature_views

    views = feature_views(cfg)
    return [user, merchant, *views.values(), *feature_services(views)]


def apply(cfg: Config, project: str | None = None, directory: Path | None = None):
    """Register the repository's objects for ``cfg`` (what `feast apply` does) in the
    registry of ``directory`` (default: the profile's ``<data_dir>/feast``) under
    ``project`` (default: the online store's); return the store."""
    # Imported here: the package is imported for its definitions (feature_services, by
    # Feast's CLI) where the online store's 1.5 s of imports would be wasted.
    from plumbing.feast_repo import feature_store
    from plumbing.online_store import FEAST_PROJECT

    store = feature_store(cfg, project or FEAST_PROJECT, directory)
    store.apply(repo_objects(cfg))
    return store
