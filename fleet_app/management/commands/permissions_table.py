"""Print the permission table (Markdown), as the README shows it."""

from fleet_app import access
from fleet_app.management.base import CutoverCommand


class Command(CutoverCommand):
    help = "Print the permission table: every model, action, route, dashboard and command."

    def handle(self, *args, **options):
        self.stdout.write(access.table_markdown(), ending="")
