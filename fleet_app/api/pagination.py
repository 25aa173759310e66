"""Cursor pagination of the staff API lists.

DRF's cursor pagination quietly falls back to its default page size when ``page_size``
is not a positive whole number; here a wrong ``page_size`` is a 400 that says so, and the
schema gives the bounds. A blank ``page_size`` is the default page size, as every blank
query parameter of the staff API means "not given".
"""

import re

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination

WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


class StrictCursorPagination(CursorPagination):
    """Cursor pagination whose ``page_size`` is checked, not ignored when wrong."""

    page_size_query_param = "page_size"
    max_page_size = 1000

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param, "") if request else ""
        if raw == "":
            return self.page_size
        value = int(raw) if WHOLE_NUMBER.fullmatch(raw) else 0
        if not 1 <= value <= self.max_page_size:
            raise ValidationError(
                {
                    self.page_size_query_param: [
                        f"Give page_size as a whole number from 1 to {self.max_page_size}."
                    ]
                }
            )
        return value

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters


class NewestFirst(StrictCursorPagination):
    """Newest row first (by primary key): the default of every staff API list."""

    ordering = "-pk"
