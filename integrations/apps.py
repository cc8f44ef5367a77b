from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Platform integrations"

    def ready(self):
        from integrations import receivers

        receivers.connect()
