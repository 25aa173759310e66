"""Signals other apps listen to; fleet_app imports none of them.

``inventory_received`` is sent inside the ingest transaction, after the inventory row
and the system's copied fields are written, with ``system`` and ``inventory``. A
receiver that raises rolls the inventory back, so receivers must only record facts,
never call out.
"""

from django.dispatch import Signal

inventory_received = Signal()

# Sent once per issued secret, the first time a system authenticates with it (inside the
# request, after ``secret_confirmed_at`` is stamped), with ``system``.
secret_confirmed = Signal()

# Sent by ``manage.py seed_demo`` once the demo fleet is loaded (idempotently: on every
# run), so each app adds its own part of the demo.
demo_seeded = Signal()
