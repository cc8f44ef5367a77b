"""Register the registry as a confidential client (authorization code flow, RS256 ID tokens, no consent page)."""
from django.core.management.base import BaseCommand
from oauth2_provider.models import Application


class Command(BaseCommand):
    help = "Register an OIDC client: provider_client --client-id ID --client-secret S --redirect-uri URL"

    def add_arguments(self, parser):
        parser.add_argument("--client-id", required=True)
        parser.add_argument("--client-secret", required=True)
        parser.add_argument("--redirect-uri", required=True)

    def handle(self, *args, client_id, client_secret, redirect_uri, **options):
        Application.objects.update_or_create(client_id=client_id, defaults={
            "name": "LLM model registry", "client_secret": client_secret, "redirect_uris": redirect_uri,
            "client_type": Application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
            "algorithm": Application.RS256_ALGORITHM, "skip_authorization": True,
        })
