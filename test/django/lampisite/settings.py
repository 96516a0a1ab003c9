"""A minimal LAMPI site for lampi-ingest's tests: the `lampi` app's model and Django's admin.

The database comes from DATABASE_URL (postgresql://user:password@host:port/name), the same
setting lampi-ingest reads, so both sides of a test talk to one database.
"""
import os
from urllib.parse import unquote, urlsplit

_db = urlsplit(os.environ["DATABASE_URL"])

SECRET_KEY = "lampi-ingest-test-site-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "lampi",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "lampisite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(_db.path.lstrip("/")),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": str(_db.port or ""),
    }
}

# The LAMPI site predates BigAutoField: its tables have integer ids.
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "/static/"

# MQTT broker the site publishes association messages to (as the LAMPI site does).
LAMPI_MQTT_HOST = os.environ.get("LAMPI_MQTT_HOST", "127.0.0.1")
LAMPI_MQTT_PORT = int(os.environ.get("LAMPI_MQTT_PORT", "1883"))
LAMPI_ASSOCIATION_TOPIC = os.environ.get("LAMPI_ASSOCIATION_TOPIC", "/devices/{device_id}/lamp/associated")
