"""Cutover staff API routes under /api/cutover/."""

urlpatterns: list = []
