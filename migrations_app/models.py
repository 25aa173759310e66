"""The app's models, one module per capability; Django looks for them here.

Each keeps the app label ``migrations_app`` and its table, so moving a model between
capabilities needs no migration.
"""

from .accounts.models import (
    DedupeCheckpoint,
    DedupeJournal,
    DedupeMerged,
    DedupeReview,
    DedupeRun,
    LegacyAccount,
    LegacyOrganization,
    LegacyRole,
    QuotaRun,
)
from .bundles.models import (
    BundleExport,
    BundleImport,
    BundleRowState,
    BundleSelection,
    TrustedBundleKey,
)
from .cutover.models import (
    CutoverDay,
    FingerprintAnomaly,
    LegacyMapping,
    MappingImportRun,
    ProxyAttemptDay,
    RotationRun,
)

__all__ = [
    "BundleExport",
    "BundleImport",
    "BundleRowState",
    "BundleSelection",
    "TrustedBundleKey",
    "CutoverDay",
    "DedupeCheckpoint",
    "DedupeJournal",
    "DedupeMerged",
    "DedupeReview",
    "DedupeRun",
    "FingerprintAnomaly",
    "LegacyAccount",
    "LegacyMapping",
    "LegacyOrganization",
    "LegacyRole",
    "MappingImportRun",
    "ProxyAttemptDay",
    "QuotaRun",
    "RotationRun",
]
