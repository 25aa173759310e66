"""Cutover dashboard routes under /dashboard/."""

urlpatterns: list = []
