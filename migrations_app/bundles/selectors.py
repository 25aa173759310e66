"""Read queries of bundles: what a selection reaches, the exports and imports on record."""

from __future__ import annotations

from django.db.models import Max, Q, QuerySet

from fleet_app import access
from fleet_app.models import Organization

from .models import BundleExport, BundleImport, BundleSelection


def organizations_of(slugs: list[str]) -> QuerySet[Organization]:
    """The organizations named and everything below them (one prefix match each)."""
    roots = list(Organization.objects.filter(slug__in=slugs).values_list("slug", "path"))
    missing = sorted(set(slugs) - {slug for slug, _ in roots})
    if missing:
        raise LookupError(f"No organization has the slug {missing[0]!r}.")
    match = Q()
    for _slug, path in roots:
        match |= Q(path__startswith=path)
    return Organization.objects.filter(match) if roots else Organization.objects.none()


def selection_get(name: str) -> BundleSelection:
    row = BundleSelection.objects.filter(name=name).first()
    if row is None:
        raise LookupError(f"No saved selection is called {name!r}.")
    return row


def export_last(scope_key: str) -> BundleExport | None:
    """The last finished export of the same selection: an incremental's default base."""
    return (
        BundleExport.objects.filter(scope_key=scope_key, state="succeeded")
        .order_by("-sequence")
        .first()
    )


def export_at(scope_key: str, when) -> BundleExport | None:
    """The last finished export of the selection made at or before ``when``."""
    return (
        BundleExport.objects.filter(scope_key=scope_key, state="succeeded", created_at__lte=when)
        .order_by("-sequence")
        .first()
    )


def export_next_sequence() -> int:
    return (BundleExport.objects.aggregate(top=Max("sequence"))["top"] or 0) + 1


def imports_applied(signer: str) -> QuerySet[BundleImport]:
    return BundleImport.objects.filter(signer=signer, applied_at__isnull=False)


def import_last_sequence(signer: str) -> int:
    return imports_applied(signer).aggregate(top=Max("sequence"))["top"] or 0


def stream_exports_visible_to(user, *, any_format: bool = False) -> QuerySet[BundleExport]:
    """The exports a staff API caller reaches (a tenant: those started in its subtree);
    streamed ones only, unless ``any_format`` (a base of an incremental may be a file)."""
    rows = (
        BundleExport.objects.all() if any_format else BundleExport.objects.filter(format="stream")
    )
    return access.scope_queryset(user, rows)
