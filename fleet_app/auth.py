"""Staff login by e-mail, matched case-insensitively among active accounts."""

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend


class EmailBackend(ModelBackend):
    """ModelBackend that finds the active account whose e-mail matches in any case.

    E-mail is unique only among active accounts (see ``User.Meta``), so inactive
    duplicates left by a legacy import never make a login ambiguous.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        email = username or kwargs.get("email")
        if not email or password is None:
            return None
        user_model = get_user_model()
        user = user_model.objects.filter(email__iexact=email, is_active=True).first()
        if user is None:
            # Run the hasher anyway so a missing account costs the same time.
            user_model().set_password(password)
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None
