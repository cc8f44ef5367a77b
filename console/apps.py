from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The admin UI: every app's pages, registered here so the face sits above all the services it calls."""

    name = "console"
    verbose_name = "Admin UI"
