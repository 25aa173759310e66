"""Organizations: created by ``organization_create`` (which audits), never moved by a form."""

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from .. import services
from ..errors import InvalidInput
from ..models import Organization
from .base import AuditedModelAdmin


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ("name", "kind", "parent")

    def __init__(self, *args: Any, request: HttpRequest | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.request = request

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is not None or "kind" not in self.fields:
            return cleaned
        kind, parent = cleaned.get("kind"), cleaned.get("parent")
        if not kind:
            return cleaned
        # Checked here too so the form can say it; organization_create checks it again.
        try:
            services.organization_placement_check(kind=kind, parent=parent)
        except InvalidInput as error:
            self.add_error("parent", error.message)
        user = getattr(self.request, "user", None)
        if parent is None and user is not None and not user.is_superuser:
            self.add_error("parent", "Choose the organization the new one sits under.")
        return cleaned


@admin.register(Organization)
class OrganizationAdmin(AuditedModelAdmin):
    form = OrganizationForm
    list_display = ("name", "slug", "kind", "parent", "path", "created_at")
    list_filter = ("kind",)
    list_select_related = ("parent",)
    search_fields = ("name", "=slug", "=path")
    ordering = ("path",)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "kind", "parent")
        return ("name", "slug", "kind", "parent", "path", "created_at")

    def get_readonly_fields(self, request, obj=None):
        # Moving an organization would rewrite the path of its whole subtree: not a form edit.
        # The slug is set once by organization_create: scripts and commands name it.
        if obj is None:
            return ()
        return ("slug", "kind", "parent", "path", "created_at")

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change=change, **kwargs)

        class RequestForm(form_class):
            def __init__(self, *args: Any, **kw: Any):
                super().__init__(*args, request=request, **kw)

        return RequestForm

    def audit_organization(self, obj, verb):
        # A deleted organization's entry would lose its organization: file it under the parent.
        return obj.parent if verb == "delete" else obj

    def create_object(self, request, obj, form):
        return services.organization_create(
            actor=request.user,
            name=form.cleaned_data["name"],
            kind=form.cleaned_data["kind"],
            parent=form.cleaned_data.get("parent"),
        )
