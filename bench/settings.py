"""The product's settings, with the benchmark's floor views routed (bench/floor.py)."""

from controlplane.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor"
