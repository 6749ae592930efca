"""The one rule for modality (and tower) names: defined in the data layer (:mod:`data_adapters.names`, which
imports nothing but ``re``), re-exported here for the model side."""

from data_adapters.names import (  # noqa: F401
    _NAME,
    MAX_NAME_LENGTH,
    MAX_TOWER_NAME_LENGTH,
    MODULEDICT_ATTRIBUTES,
    NAME_RULE,
    check_names,
    name_problem,
)

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_TOWER_NAME_LENGTH",
    "MODULEDICT_ATTRIBUTES",
    "NAME_RULE",
    "check_names",
    "name_problem",
]
