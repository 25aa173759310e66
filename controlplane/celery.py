"""The Celery application: broker from REDIS_URL, configuration from Django settings."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("cutover")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
