"""API token authentication that loads the user's roles in the same query as the token.

Every API request checks a role; DRF's TokenAuthentication reads the token (with its user) and the role check
then reads the user's groups: two round trips per request. Here both come back from one query, and the roles
land where foundation.roles.user_roles looks for them.
"""
from django.contrib.postgres.aggregates import ArrayAgg
from django.db.models import Q
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication


class TokenWithRolesAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key):
        model = self.get_model()
        token = (model.objects.select_related("user")
                 .annotate(role_names=ArrayAgg("user__groups__name", filter=Q(user__groups__isnull=False),
                                               default=[]))
                 .filter(key=key).first())
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        token.user._registry_roles = set(token.role_names)
        return token.user, token
