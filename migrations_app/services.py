"""Services reached from outside the app: a mapping is built as the import command builds it."""

from .cutover.services import mappings_import

__all__ = ["mappings_import"]
