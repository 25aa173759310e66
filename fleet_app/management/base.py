"""The base of every command: who runs it is checked against the permission table.

Shell access is the platform's, so a command run without ``--actor`` runs as the
platform. ``--actor EMAIL`` runs it as that staff account: the command's row in the
table must grant the account's persona ``run``, and whatever the command reaches
(organizations to import into, say) is what that account may reach. A refusal exits
non-zero with one sentence and leaves an audit entry.
"""

from django.core.management.base import BaseCommand, CommandError

from .. import access, services
from ..models import User


class CutoverCommand(BaseCommand):
    """A command gated by its row in the permission table (kind ``command``)."""

    actor: User | None = None

    @property
    def command_name(self) -> str:
        return self.__module__.rsplit(".", 1)[-1]

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument(
            "--actor",
            metavar="EMAIL",
            help="Run as this staff account, within what its role reaches (default: the platform).",
        )
        return parser

    def actor_check(self, user: User | None) -> None:
        """Refuse (CommandError, audited) unless ``user`` may run this command."""
        if user is None:
            return
        if not access.allowed(user, "command", self.command_name, "r"):
            services.audit_record(
                actor=user,
                action="access.refused",
                after={"what": f"command {self.command_name}"},
                organization=user.organization if user.organization_id else None,
            )
            raise CommandError(f"{user.email} may not run {self.command_name}: {_why(user)}")

    def execute(self, *args, **options):
        email = options.get("actor")
        user = None
        if email:
            user = User.objects.filter(email__iexact=email, is_active=True).first()
            if user is None:
                raise CommandError(f"No active account has the e-mail {email}.")
        self.actor_check(user)
        self.actor = user
        return super().execute(*args, **options)


def _why(user: User) -> str:
    if access.persona(user) is None:
        return "the account has no role."
    return "its role does not reach this command."
