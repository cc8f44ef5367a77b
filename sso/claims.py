"""From the provider's claims to our roles and teams: a pure function of the claims and the mapping settings."""
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from foundation.roles import ALL_ROLES
from registry.models import model_name_validator


@dataclass(frozen=True)
class GrantedAccess:
    roles: frozenset[str]
    # None: no team mapping is configured, teams stay as the admin manages them.
    teams: frozenset[str] | None
    # Claim values that named a team we cannot create (not a lowercase slug); shown in the audit event.
    refused_teams: tuple[str, ...] = ()


def claim_values(claims: dict, claim_name: str) -> list[str]:
    """The claim as a list of strings: providers send a JSON list, some a single string."""
    value = claims.get(claim_name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, str)]
    return []


def access_from_claims(claims: dict, *, groups_claim: str, role_map: dict[str, str], team_map: dict[str, str],
                       team_prefix: str) -> GrantedAccess:
    """Roles and teams that a user with these claims holds (never superuser: that is not the provider's to give)."""
    values = claim_values(claims, groups_claim)
    mapping = role_map or {role: role for role in ALL_ROLES}
    roles = frozenset(mapping[value] for value in values if mapping.get(value) in ALL_ROLES)
    if not team_map and not team_prefix:
        return GrantedAccess(roles=roles, teams=None)
    named = [team_map[value] for value in values if value in team_map]
    if team_prefix:
        named += [value[len(team_prefix):] for value in values if value.startswith(team_prefix)]
    teams, refused = set(), []
    for name in named:
        try:
            model_name_validator(name)
        except ValidationError:
            refused.append(name)
        else:
            teams.add(name)
    return GrantedAccess(roles=roles, teams=frozenset(teams), refused_teams=tuple(sorted(refused)))
