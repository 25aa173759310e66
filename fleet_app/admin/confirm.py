"""Ask before destroying: one confirmation page for every admin action that deletes,
re-issues, revokes, rotates, undoes or repairs.

``confirm_first`` wraps an admin action (a list action or a ``form_action`` on an object's
page, the same function). The first POST only renders the page: what will change, how many,
the names of the first ``NAMES_SHOWN`` objects, and those of the selection that would be
skipped, with why. Its form posts the same request again with ``confirmed=yes``, which runs
the action; "Cancel" goes back to the page the click came from. Nothing changes before that
second POST.

Django's own "Delete selected" already asks first (its confirmation lists every object);
the actions of ours go through here.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

# The field the confirmation page adds to the POST it sends again.
CONFIRM_FIELD = "confirmed"
# How many names the page lists; the count always covers the whole selection.
NAMES_SHOWN = 50
# Set on the action function: tests (and readers) can tell which actions ask first.
MARK = "asks_confirmation"


@dataclass
class Confirmation:
    """What the page says: a title, the sentence of consequence, the objects affected."""

    title: str
    consequence: str
    count: int
    # (name, lines under it: a divergence fix's commands, say) of the first objects.
    items: list[tuple[str, list[str]]] = field(default_factory=list)
    skipped: int = 0
    skipped_why: str = ""
    button: str = "Yes, go ahead"

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.items]

    @property
    def more(self) -> int:
        return max(0, self.count - len(self.items))


def confirmed(request: HttpRequest) -> bool:
    return request.method == "POST" and request.POST.get(CONFIRM_FIELD) == "yes"


def _replayed_fields(request: HttpRequest) -> list[tuple[str, str]]:
    # An admin that rewrites the posted selection (API tokens post key prefixes, never
    # their digests) leaves the form as it was posted on the request.
    posted = getattr(request, "confirm_posted", None) or request.POST
    return [
        (name, value)
        for name in posted
        if name not in ("csrfmiddlewaretoken", CONFIRM_FIELD)
        for value in posted.getlist(name)
    ]


def confirmation_response(
    model_admin: admin.ModelAdmin, request: HttpRequest, confirmation: Confirmation
) -> HttpResponse:
    """The page that asks; its form posts the same fields again, confirmed."""
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": confirmation.title,
        "opts": opts,
        "confirmation": confirmation,
        "fields": _replayed_fields(request),
        "confirm_field": CONFIRM_FIELD,
        "action_url": request.get_full_path(),
        # Back where the click came from: the list (with its filters) or the object's page.
        "cancel_url": request.get_full_path(),
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/confirm_action.html", context)


def confirm_first(
    *,
    verb: str,
    consequence: str,
    affected: Callable[[QuerySet], QuerySet] | None = None,
    skipped_why: str = "",
    name: Callable[[Any], str] = str,
    details: Callable[[Any], list[str]] | None = None,
    button: str = "",
):
    """An admin action that asks first.

    ``verb`` ("Delete", "Re-issue the secret of") starts the title; ``affected`` narrows
    the selection to the objects the action will change (the rest are counted as skipped,
    ``skipped_why`` says why); ``name`` and ``details`` say how an object is listed.
    """

    def decorator(func):
        @functools.wraps(func)
        def wrapper(model_admin, request, queryset):
            if confirmed(request):
                return func(model_admin, request, queryset)
            return confirmation_response(
                model_admin,
                request,
                describe(
                    model_admin,
                    queryset,
                    verb=verb,
                    consequence=consequence,
                    affected=affected,
                    skipped_why=skipped_why,
                    name=name,
                    details=details,
                    button=button,
                ),
            )

        setattr(wrapper, MARK, True)
        return wrapper

    return decorator


def describe(
    model_admin: admin.ModelAdmin,
    queryset: QuerySet,
    *,
    verb: str,
    consequence: str,
    affected: Callable[[QuerySet], QuerySet] | None = None,
    skipped_why: str = "",
    name: Callable[[Any], str] = str,
    details: Callable[[Any], list[str]] | None = None,
    button: str = "",
) -> Confirmation:
    """Count and name what an action on ``queryset`` will change (two counts and one
    capped list, whatever the size of the selection)."""
    opts = model_admin.model._meta
    selected = queryset.count()
    chosen = affected(queryset) if affected is not None else queryset
    count = chosen.count() if affected is not None else selected
    objects: list[Model] = list(chosen.order_by("pk")[:NAMES_SHOWN]) if count else []
    noun = opts.verbose_name if count == 1 else opts.verbose_name_plural
    return Confirmation(
        title=f"{verb} {count} {noun}?",
        consequence=consequence,
        count=count,
        items=[(name(obj), details(obj) if details is not None else []) for obj in objects],
        skipped=selected - count,
        skipped_why=skipped_why,
        button=button or f"Yes, {verb[0].lower()}{verb[1:]} {count} {noun}",
    )
