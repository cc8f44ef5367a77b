"""What a sign-on changes: the user's roles and teams, refreshed from the provider's claims at each login, and the
API tokens SSO users create for their scripts. Each writes its audit event in the same transaction."""
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from rest_framework.authtoken.models import Token

from foundation.audit import append_event
from foundation.roles import ALL_ROLES
from registry.models import Team
from sso.claims import access_from_claims, claim_values

logger = logging.getLogger(__name__)


def _access_snapshot(user) -> dict:
    return {
        "roles": sorted(user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True)),
        "teams": sorted(user.model_teams.values_list("name", flat=True)),
        "is_staff": user.is_staff,
    }


@transaction.atomic
def sign_in_from_claims(*, username: str, claims: dict):
    """Create or update the user the provider vouches for; roles and teams become what the claims grant now."""
    User = get_user_model()
    user = User.objects.select_for_update().filter(username=username).first()
    created = user is None
    if created:
        user = User(username=username)
        # The provider is the only way in for this user; there is no local password to guess.
        user.set_unusable_password()
        user.save()
    before = None if created else _access_snapshot(user)

    user.email = claims.get("email") or user.email
    user.first_name = (claims.get("given_name") or user.first_name)[:150]
    user.last_name = (claims.get("family_name") or user.last_name)[:150]

    access = access_from_claims(claims, groups_claim=settings.OIDC_GROUPS_CLAIM, role_map=settings.OIDC_ROLE_MAP,
                                team_map=settings.OIDC_TEAM_MAP, team_prefix=settings.OIDC_TEAM_PREFIX)
    # Only the four roles are the provider's; other Django groups are left as an administrator set them.
    user.groups.remove(*Group.objects.filter(name__in=ALL_ROLES).exclude(name__in=access.roles))
    user.groups.add(*Group.objects.filter(name__in=access.roles))
    if access.teams is not None:
        teams = [Team.objects.get_or_create(name=name)[0] for name in sorted(access.teams)]
        user.model_teams.set(teams)
    # The admin needs is_staff; a user whose roles were all taken away loses it. Superuser status is never
    # granted (nor taken) here.
    user.is_staff = bool(access.roles) or user.is_superuser
    user.save(update_fields=["email", "first_name", "last_name", "is_staff"])

    after = _access_snapshot(user)
    after["claim"] = {settings.OIDC_GROUPS_CLAIM: claim_values(claims, settings.OIDC_GROUPS_CLAIM)}
    if access.refused_teams:
        after["refused_teams"] = list(access.refused_teams)
        logger.warning("SSO login of %s: claim values name teams that are not valid team names: %s",
                       username, ", ".join(access.refused_teams))
    append_event(actor=user, action="user.sso_login", object_type="user", object_id=user.pk,
                 before=before, after={**after, "created": created})
    return user


@transaction.atomic
def create_api_token(*, user) -> Token:
    """A new API token for the user's scripts; the previous one, if any, stops working."""
    replaced = Token.objects.filter(user=user).delete()[0] > 0
    token = Token.objects.create(user=user)
    append_event(actor=user, action="user.api_token_created", object_type="user", object_id=user.pk,
                 after={"replaced_previous_token": replaced})
    return token
