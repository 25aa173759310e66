"""The inventory differ: paths, severities, volatile fields, keyed lists."""

from fleet_app.inventory_diff import MAX_CHANGES, diff


def test_unchanged_documents_have_no_changes():
    doc = {"facts": {"nodes": {"1": {"version": "1", "uptime_seconds": 5}}}}

    assert diff(doc, doc) == []


def test_volatile_fields_are_ignored():
    before = {"n": {"uptime": 1, "rx_bytes": 5, "memory": {"used": 3}, "load_avg": 0.1}}
    after = {"n": {"uptime": 2, "rx_bytes": 9, "memory": {"used": 4}, "load_avg": 0.9}}

    assert diff(before, after) == []


def test_keyed_lists_compare_by_id():
    before = {"modules": [{"id": "a", "version": "1"}, {"id": "b", "version": "1"}]}
    after = {"modules": [{"id": "b", "version": "2"}, {"id": "c", "version": "1"}]}

    changes = {path: (old, new, sev) for path, old, new, sev in diff(before, after)}

    assert changes == {
        "modules[a]": ("present", None, "warning"),
        "modules[c]": (None, "present", "warning"),
        "modules[b].version": ("1", "2", "critical"),
    }


def test_plain_lists_are_compared_without_order():
    assert diff({"dns": ["a", "b"]}, {"dns": ["b", "a"]}) == []
    assert diff({"dns": ["a"]}, {"dns": ["a", "c"]}) == [("dns", ["a"], ["a", "c"], "info")]


def test_the_number_of_changes_is_capped():
    before = {"k": {str(i): i for i in range(MAX_CHANGES * 2)}}
    after = {"k": {str(i): i + 1 for i in range(MAX_CHANGES * 2)}}

    assert len(diff(before, after)) == MAX_CHANGES
