"""Accounts and the role groups: scoped to the staff user's subtree, audited."""

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.contrib.auth.hashers import is_password_usable
from django.contrib.auth.models import Group
from django.db import router, transaction
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from .. import access, services
from ..models import User
from .base import AuditedModelAdmin, EstimatedCountPaginator


class FleetUserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "full_name", "organization")

    def clean_email(self) -> str:
        # The unique constraint is conditional on is_active, which this form does not
        # carry, so the model validation skips it: check it here, as the database will.
        email = self.cleaned_data["email"]
        if User.objects.filter(email__iexact=email, is_active=True).exists():
            raise forms.ValidationError("An active account with this e-mail already exists.")
        return email


class FleetUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(AuditedModelAdmin, DjangoUserAdmin):
    form = FleetUserChangeForm
    add_form = FleetUserCreationForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Personal info", {"fields": ("full_name", "organization")}),
        (
            "Permissions",
            {
                "fields": (
                    "is_active",
                    "is_staff",
                    "is_superuser",
                    "groups",
                    "user_permissions",
                )
            },
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": (
                    "email",
                    "full_name",
                    "organization",
                    "usable_password",
                    "password1",
                    "password2",
                ),
            },
        ),
    )
    # Legacy imports make this a big table too.
    paginator = EstimatedCountPaginator
    list_display = ("email", "full_name", "organization", "is_staff", "is_active", "last_login")
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")
    list_select_related = ("organization",)
    search_fields = ("email", "full_name")
    ordering = ("email",)
    filter_horizontal = ("groups", "user_permissions")

    def get_queryset(self, request):
        users = super().get_queryset(request)
        if not access.is_platform(request.user):
            # A tenant admin cannot edit (or reset the password of) an account above them.
            users = users.filter(is_superuser=False).exclude(groups__name=access.OPERATOR)
        return users

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "groups" and not request.user.is_superuser:
            # A tenant admin hands out the tenant roles only, never the platform's.
            kwargs["queryset"] = Group.objects.filter(name__in=access.TENANT_PERSONAS)
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # Roles are granted through groups; a scoped admin hands out no more than that.
            readonly += ["is_superuser", "user_permissions"]
        return readonly

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "organization" and not request.user.is_superuser:
            # An account without an organization would be invisible to whoever made it.
            kwargs["required"] = True
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @method_decorator(sensitive_post_parameters())
    def user_change_password(self, request, id, form_url=""):
        if request.method != "POST":
            return super().user_change_password(request, id, form_url)
        with transaction.atomic(using=router.db_for_write(self.model)):
            user = self.get_object(request, unquote(id))
            before = user.password if user is not None else None
            response = super().user_change_password(request, id, form_url)
            after = User.objects.filter(pk=user.pk).values_list("password", flat=True).first()
            if after != before:
                user.refresh_from_db()
                services.audit_record(
                    actor=request.user,
                    action="user.password_change",
                    obj=user,
                    before={"has_usable_password": is_password_usable(before)},
                    after={"has_usable_password": user.has_usable_password()},
                )
            return response


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(AuditedModelAdmin, DjangoGroupAdmin):
    """The role groups are global: a scoped admin may grant them, not redefine them.

    The table lets tenant admins view the tenant roles (to grant them); editing a group
    would change what every organization's readers or admins may do, so only superusers
    add, change or delete one. Their edits are audited like any other.
    """

    def get_queryset(self, request):
        groups = super().get_queryset(request)
        if not access.is_platform(request.user):
            return groups.filter(name__in=access.TENANT_PERSONAS)
        return groups
