"""Staff login by e-mail, matched case-insensitively among active accounts."""

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import make_password, verify_password

from . import hashing


def _verify(password: str, encoded: str) -> tuple[bool, str | None]:
    """Whether ``password`` matches, and its new encoding when the hasher's settings moved.

    Pure computation, so it can run on the hashing pool's thread: the upgrade is saved by
    the caller, on the request's own database connection.
    """
    correct, must_update = verify_password(password, encoded)
    return correct, (make_password(password) if correct and must_update else None)


class EmailBackend(ModelBackend):
    """ModelBackend that finds the active account whose e-mail matches in any case.

    E-mail is unique only among active accounts (see ``User.Meta``), so inactive
    duplicates left by a legacy import never make a login ambiguous. Every hash goes
    through ``hashing.bounded`` (a host-wide bound on concurrent hashes); when it is
    full the sign-in is refused with ``hashing.SignInBusy`` before hashing.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        email = username or kwargs.get("email")
        if not email or password is None:
            return None
        user_model = get_user_model()
        user = user_model.objects.filter(email__iexact=email, is_active=True).first()
        if user is None:
            # Run the hasher anyway so a missing account costs the same time.
            hashing.bounded(lambda: make_password(password))
            return None
        correct, upgraded = hashing.bounded(lambda: _verify(password, user.password))
        if upgraded is not None:
            user.password = upgraded
            user.save(update_fields=["password"])
        if correct and self.user_can_authenticate(user):
            return user
        return None


def login_username(request, credentials=None) -> str | None:
    """The account a sign-in names, as the sign-in lockout counts it.

    Logins match e-mail in any case, so the count must too: otherwise each spelling of one
    address would get a fresh allowance of guesses.
    """
    if credentials:
        raw = credentials.get("username")
    else:
        raw = getattr(request, "POST", {}).get("username")
    return raw.strip().lower() if isinstance(raw, str) else None
