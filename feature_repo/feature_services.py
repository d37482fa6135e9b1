"""The Feast feature services, built from the catalog's (``transformations.catalog``:
``FEATURE_SERVICE_TABLES``, and ``feature_refs`` for readers that do without Feast)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from transformations.catalog import FEATURE_SERVICE_TABLES, feature_refs

if TYPE_CHECKING:
    from feast import FeatureService, FeatureView

__all__ = ["FEATURE_SERVICE_TABLES", "feature_refs", "feature_services"]


def feature_services(views: dict[str, FeatureView]) -> list[FeatureService]:
    from feast import FeatureService  # here: importing this module costs no Feast

    return [FeatureService(name=name, features=[views[table] for table in tables],
                           description="Every feature the fraud model uses.")
            for name, tables in FEATURE_SERVICE_TABLES.items()]
