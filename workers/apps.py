from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Jobs"

    def ready(self):
        from workers import receivers

        receivers.connect()
