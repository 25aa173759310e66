"""Admin for staff API tokens (knox's ``AuthToken``), in place of knox's own.

- A token is named by its key prefix (``token_key``, its first 15 characters) in every
  page, link, checkbox and message: the digest (the row's primary key) never leaves the
  database, and knox's ``str()`` of a token, which contains it, is never rendered.
- The list is the tokens of ``users_visible_to(request.user)``; a non-superuser never
  sees a superuser's tokens.
- Tokens are created by ``tokens.api_token_create`` from a small form; the token is
  shown once, in the response to that POST (admin pages are never cached). The form
  carries a one-time value, so a reload that re-sends the POST creates nothing.
- They are removed by "Revoke selected tokens" (``tokens.api_token_revoke``); there is no
  edit and no other delete. Both services write the audit entries.
"""

import datetime as dt
import secrets
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.debug import sensitive_variables
from knox import admin as knox_admin  # noqa: F401 - registers knox's admin, replaced below
from knox.models import AuthToken

from .. import selectors, tokens
from ..errors import FleetError
from ..models import User
from .base import ReadOnlyModelAdmin
from .confirm import confirm_first

admin.site.unregister(AuthToken)

# How long a one-time form value is remembered: longer than anyone keeps the form open.
FORM_ONCE_SECONDS = 24 * 3600


class ApiTokenAddForm(forms.Form):
    """Whom the token is for and how long it lasts; ``once`` makes the POST single-use."""

    def __init__(self, *args: Any, actor, **kwargs: Any):
        super().__init__(*args, **kwargs)
        ttl_days = settings.API_TOKEN_TTL_DAYS
        self.fields["user"] = forms.ModelChoiceField(
            queryset=tokens.api_tokens_creatable_for(actor).order_by("email"),
            help_text="The token acts as this account.",
        )
        self.fields["expires_in_days"] = forms.IntegerField(
            label="Expires in (days)", min_value=1, max_value=ttl_days, initial=ttl_days
        )
        self.fields["once"] = forms.CharField(
            widget=forms.HiddenInput, initial=secrets.token_urlsafe(16)
        )


class TokenStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("active", "Active"), ("expired", "Expired (purged within the hour)"))

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(expiry__gt=timezone.now())
        if self.value() == "expired":
            return queryset.filter(expiry__lte=timezone.now())
        return queryset if self.value() is None else queryset.none()


class TokenChangeList(ChangeList):
    def url_for_result(self, result: AuthToken) -> str:
        return reverse("admin:knox_authtoken_change", args=[result.token_key])


@admin.register(AuthToken)
class ApiTokenAdmin(ReadOnlyModelAdmin):
    list_display = ("token_key", "user", "created", "expiry", "state")
    list_select_related = ("user",)
    list_filter = (TokenStateFilter,)
    search_fields = ("=token_key", "user__email")
    ordering = ("-created",)
    fields = ("token_key", "user", "created", "expiry", "state")
    readonly_fields = fields
    actions = ("revoke",)
    change_form_template = "admin/knox/authtoken/change_form.html"

    def get_queryset(self, request):
        users = selectors.users_visible_to(request.user)
        if not request.user.is_superuser:
            users = users.filter(is_superuser=False)
        return AuthToken.objects.filter(user__in=users).select_related("user")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(tokens.PERMISSION_CREATE)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(tokens.PERMISSION_REVOKE)

    @admin.display(description="state")
    def state(self, obj: AuthToken) -> str:
        if obj.expiry is not None and obj.expiry <= timezone.now():
            return "expired"
        return "active"

    # --- Named by the key prefix, never by the digest ------------------------------------

    def get_changelist(self, request, **kwargs):
        return TokenChangeList

    def action_checkbox(self, obj: AuthToken) -> str:
        attrs = {"class": "action-select", "aria-label": f"Select token {obj.token_key}"}
        checkbox = forms.CheckboxInput(attrs, lambda value: False)
        return checkbox.render(helpers.ACTION_CHECKBOX_NAME, obj.token_key)

    def get_object(self, request, object_id, from_field=None):
        # A token_key is not unique by constraint; two tokens sharing 60 random bits are
        # not expected, and an ambiguous prefix names no token rather than either.
        found = list(self.get_queryset(request).filter(token_key=object_id)[:2])
        return found[0] if len(found) == 1 else None

    def response_action(self, request, queryset):
        # The checkboxes carry key prefixes; Django's action handling selects by pk.
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if selected:
            # The confirmation page posts the key prefixes again, never the digests.
            request.confirm_posted = request.POST
            request.POST = request.POST.copy()
            request.POST.setlist(
                helpers.ACTION_CHECKBOX_NAME,
                list(queryset.filter(token_key__in=selected).values_list("pk", flat=True)),
            )
        return super().response_action(request, queryset)

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        # A token outside the user's scope is simply not there: a 404, not a redirect to
        # the index with a message naming the id that was tried.
        raise Http404("No such API token.")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The page's subtitle (and <title>) would otherwise be str(token), its digest.
        token = self.get_object(request, object_id)
        subtitle = f"Token {token.token_key}… of {token.user}" if token is not None else None
        extra_context = {**(extra_context or {}), "subtitle": subtitle}
        return super().change_view(request, object_id, form_url, extra_context)

    def history_view(self, request, object_id, extra_context=None):
        # Token events are audit entries of the token's account (Django's history would
        # title the page with the token's str(), which holds its digest).
        token = self.get_object(request, object_id)
        if token is None:
            raise Http404("No such API token.")
        if not self.has_view_permission(request, token):
            raise PermissionDenied
        user_type = ContentType.objects.get_for_model(User)
        query = urlencode({"content_type__id__exact": user_type.pk, "object_id": token.user_id})
        return HttpResponseRedirect(f"{reverse('admin:fleet_app_auditentry_changelist')}?{query}")

    # --- Create: a form, then the token, once ------------------------------------------

    @sensitive_variables("clear")
    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ApiTokenAddForm(request.POST or None, actor=request.user)
        refusal = None
        if request.method == "POST" and form.is_valid():
            once = f"fleet:api-token-form:{form.cleaned_data['once']}"
            if not cache.add(once, 1, timeout=FORM_ONCE_SECONDS):
                refusal = (
                    "This form was already sent: the token it created was shown once. "
                    "Revoke that token if it was not copied, and create another."
                )
                sent = {k: v for k, v in form.cleaned_data.items() if k != "once"}
                form = ApiTokenAddForm(actor=request.user, initial=sent)
            else:
                try:
                    token, clear = tokens.api_token_create(
                        actor=request.user,
                        user=form.cleaned_data["user"],
                        expires_in=dt.timedelta(days=form.cleaned_data["expires_in_days"]),
                    )
                except FleetError as error:
                    cache.delete(once)
                    refusal = error.message
                else:
                    return self._issued_response(request, token, clear)
        context = {
            **self.admin_site.each_context(request),
            "title": "Create an API token",
            "opts": self.opts,
            "form": form,
            "refusal": refusal,
            "ttl_days": settings.API_TOKEN_TTL_DAYS,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/knox/authtoken/add.html", context)

    @sensitive_variables("clear")
    def _issued_response(self, request: HttpRequest, token: AuthToken, clear: str):
        """The one page that ever shows the token; the admin views are never cached."""
        context = {
            **self.admin_site.each_context(request),
            "title": "Copy the API token now",
            "opts": self.opts,
            "token": token,
            "clear": clear,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/knox/authtoken/token_issued.html", context)

    # --- Revoke ----------------------------------------------------------------------------

    @admin.action(permissions=["revoke"], description="Revoke selected tokens")
    @confirm_first(
        verb="Revoke",
        consequence="Each token stops working at once: whatever uses it (a script, an "
        "integration) is refused until it is given a new token.",
        name=lambda token: f"{token.token_key}… of {token.user}",
    )
    def revoke(self, request, queryset):
        revoked = 0
        for token in queryset:
            try:
                tokens.api_token_revoke(actor=request.user, token=token)
            except FleetError as error:
                self.message_user(request, f"{token.token_key}: {error.message}", messages.ERROR)
            else:
                revoked += 1
        self.message_user(request, f"{revoked} token(s) revoked.", messages.SUCCESS)
