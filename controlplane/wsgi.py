"""WSGI entry point (gunicorn controlplane.wsgi, and runserver through WSGI_APPLICATION)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
application = get_wsgi_application()

from controlplane.production import refuse_unsafe_settings  # noqa: E402 - needs settings

refuse_unsafe_settings()
