"""Fixtures of the whole-system tests: live instances (tests/e2e/instances.py)."""

from tests.e2e.instances import instance_database_template, instances

__all__ = ["instance_database_template", "instances"]
