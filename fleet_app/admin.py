"""Admin registration for the fleet."""

from django.contrib import admin

from .models import AuditEntry, Inventory, InventoryChange, Organization, System, User

admin.site.register([Organization, User, System, Inventory, InventoryChange, AuditEntry])
