"""The nesting limit of an inventory, at its edge: a document exactly as deep as
INVENTORY_MAX_DEPTH is accepted, one level more is refused in one sentence, whether the
deepest container is an object or a list and wherever it sits among its siblings."""

import json

import pytest

from fleet_app.errors import InvalidInput
from fleet_app.inventories import INVENTORY_MAX_DEPTH, inventory_parse


def _nested(levels: int, *, innermost: str) -> bytes:
    """A phonehome document whose deepest branch has ``levels`` containers in all
    (the document itself is level 1, ``facts`` level 2), beside shallow siblings."""
    deepest: object = {} if innermost == "object" else []
    for level in range(levels - 3):
        deepest = [1, "x", deepest] if level % 2 else {"a": 1, "b": deepest}
    return json.dumps({"facts": {"nodes": {"1": {}}, "deep": deepest, "flat": [1, 2]}}).encode()


@pytest.mark.parametrize("innermost", ["object", "list"])
def test_a_document_at_the_limit_is_accepted_and_one_level_more_is_refused(innermost):
    assert inventory_parse(_nested(INVENTORY_MAX_DEPTH, innermost=innermost))["facts"]
    with pytest.raises(InvalidInput, match=f"deeper than {INVENTORY_MAX_DEPTH} levels"):
        inventory_parse(_nested(INVENTORY_MAX_DEPTH + 1, innermost=innermost))
