"""The entities features are keyed by. Their ids are strings (see transformations.schemas)."""
from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A card holder: the user of a transaction or an activity event.",
)

merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.STRING,
    description="The merchant a transaction was made at.",
)

# A feature table names its entity by its join key (FeatureTable.entity_column).
ENTITY_BY_JOIN_KEY = {"user_id": user, "merchant_id": merchant}
