from django.apps import AppConfig


class LampiConfig(AppConfig):
    name = "lampi"
