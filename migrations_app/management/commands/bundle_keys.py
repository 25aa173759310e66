"""This instance's bundle signing key and the keys it trusts.

``--public`` prints the public half of the signing key (made on first use); ``--trust
FILE`` adds the public key in FILE (what the other instance's ``--public`` printed) to the
trusted list; ``--list`` shows the trusted keys.
"""

from django.core.management.base import CommandError

from fleet_app.management.base import CutoverCommand

from ...bundles import keys
from ...bundles.models import TrustedBundleKey
from ...bundles.services import BundleRefused, trusted_key_add


class Command(CutoverCommand):
    help = "Print this instance's public bundle key, or trust another instance's."

    def add_arguments(self, parser):
        parser.add_argument("--public", action="store_true")
        parser.add_argument("--trust", metavar="FILE")
        parser.add_argument("--name", default="", help="What to call the trusted key.")
        parser.add_argument("--list", action="store_true")

    def handle(self, *args, **options):
        if options["public"]:
            self.stdout.write(keys.public_hex())
        if options["trust"]:
            try:
                text = open(options["trust"]).read()  # noqa: SIM115
            except OSError as error:
                raise CommandError(f"{options['trust']}: {error.strerror}.") from error
            try:
                ident = trusted_key_add(actor=self.actor, text=text, name=options["name"])
            except BundleRefused as error:
                raise CommandError(str(error)) from error
            self.stdout.write(f"trusted key {ident}")
        if options["list"]:
            for row in TrustedBundleKey.objects.order_by("created_at"):
                self.stdout.write(f"{row.key_id} {row.name}")
        if not (options["public"] or options["trust"] or options["list"]):
            raise CommandError("Say what to do: --public, --trust FILE or --list.")
