"""The app's admin, one module per capability; Django autodiscovers this module only."""

from .accounts import admin as accounts_admin
from .bundles import admin as bundles_admin
from .cutover import admin as cutover_admin

__all__ = ["accounts_admin", "bundles_admin", "cutover_admin"]
