"""The feature services: what each model reads. A service lists whole feature tables,
so a feature added to one of them reaches the model's next training run."""
from __future__ import annotations

from typing import TYPE_CHECKING

from transformations.catalog import FEATURE_TABLES

if TYPE_CHECKING:
    from feast import FeatureService, FeatureView

# service name -> the feature tables it uses, all their features
FEATURE_SERVICE_TABLES: dict[str, tuple[str, ...]] = {
    "fraud_model_v1": ("user_transaction_features", "user_activity_features", "merchant_features"),
}


def feature_services(views: dict[str, FeatureView]) -> list[FeatureService]:
    from feast import FeatureService  # here: readers of feature_refs do without feast

    return [FeatureService(name=name, features=[views[table] for table in tables],
                           description="Every feature the fraud model uses.")
            for name, tables in FEATURE_SERVICE_TABLES.items()]


def feature_refs(service_name: str) -> list[str]:
    """The service's features as "<feature view>:<feature>" references, without Feast's
    registry (the API and the online-store reader use these)."""
    return [f"{table}:{feature}" for table in FEATURE_SERVICE_TABLES[service_name]
            for feature in FEATURE_TABLES[table].feature_names]
