"""Staff sign-in refusals: the lockout after repeated failures, and the busy refusal.

Both answer one sentence on a bare page with ``Retry-After``. The page is built without
the template engine on purpose: under a sign-in storm it is what most requests get, and
it must cost next to nothing.
"""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import escape

from .hashing import SignInBusy, slots_taken


def refused(message: str, *, status: int, retry_after: int) -> HttpResponse:
    page = (
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>Sign-in refused</title>'
        f'<p id="refused">{escape(message)}</p>'
        f'<p><a href="{escape(reverse("admin:login"))}">Back to sign-in</a></p></html>'
    )
    response = HttpResponse(page, status=status)
    response["Retry-After"] = str(retry_after)
    response["Cache-Control"] = "no-store"
    return response


def locked_out(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """``AXES_LOCKOUT_CALLABLE``: the account or the address failed too often."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    minutes = max(1, round(seconds / 60))
    return refused(
        "Too many failed sign-ins for this account or from this address; "
        f"try again in {minutes} minute{'s' if minutes != 1 else ''}.",
        status=429,
        retry_after=seconds,
    )


def _busy() -> HttpResponse:
    return refused(SignInBusy.message, status=503, retry_after=1)


class SignInBusyMiddleware:
    """Refuses sign-ins with 503 and a sentence when no hashing slot is free.

    First in the stack: while every slot is taken, a sign-in POST is answered before
    sessions, CSRF, the form and the lockout's queries, so a storm of them costs the
    web threads the heartbeat shares almost nothing. A sign-in that passes this glance
    and still finds no slot in the backend gets the same answer (``SignInBusy``).
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.login_path = None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.login_path is None:
            self.login_path = reverse("admin:login")
        if request.method == "POST" and request.path == self.login_path and slots_taken():
            return _busy()
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception):
        if isinstance(exception, SignInBusy):
            return _busy()
        return None
