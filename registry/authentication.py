"""API tokens that also carry the ids of the teams the user belongs to, for registry.teams' write checks."""
from foundation.authentication import TokenWithRolesAuthentication
from registry.models import Team

TEAM_IDS_OF_USER = f"SELECT array(SELECT tm.team_id FROM {Team.members.through._meta.db_table} tm WHERE tm.user_id = u.id)"


class TokenWithRolesAndTeamsAuthentication(TokenWithRolesAuthentication):
    user_arrays = (*TokenWithRolesAuthentication.user_arrays, ("_registry_team_ids", TEAM_IDS_OF_USER))
