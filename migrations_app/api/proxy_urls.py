"""Legacy-facing routes; a trailing slash is optional."""

from django.urls import re_path

from ..cutover.api import proxy

urlpatterns = [
    re_path(r"^proxy/credentials/?$", proxy.credentials, name="proxy-credentials"),
    re_path(r"^api/Utils/freekey/?$", proxy.freekey, name="proxy-freekey"),
]
