"""Who may write to a model: the ml_engineer members of the team that owns it (superusers too). Approvers, ops
and regulators act across teams as their role allows, which the services of governance check themselves."""
import re

from foundation.errors import InvalidInput, NotFound, PermissionDenied
from foundation.roles import ML_ENGINEER, has_role
from registry.models import RegisteredModel, Team


def personal_team_name(username: str) -> str:
    """A team name (a lowercase slug) for a user's personal team."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", username.lower()).strip("-._")[:100]
    return slug or "personal"


def team_for_new_model(*, actor, team_name: str | None) -> Team:
    """The team a new model belongs to: the one named (which the creator must be in), else the creator's only
    team, else a personal team named after the creator; several teams and none named is a 400."""
    if team_name:
        team = Team.objects.filter(name=team_name).first()
        if team is None:
            raise NotFound(f"No team named {team_name!r}.", field="team")
        if not actor.is_superuser and not team.members.filter(pk=actor.pk).exists():
            raise PermissionDenied(f"You are not a member of team {team_name!r}; a model can only be registered "
                                   "for one of your own teams.", field="team")
        return team
    teams = list(Team.objects.filter(members=actor).order_by("name")[:2])
    if len(teams) == 1:
        return teams[0]
    if len(teams) > 1:
        names = ", ".join(Team.objects.filter(members=actor).order_by("name").values_list("name", flat=True))
        raise InvalidInput(f"You are in several teams ({names}); name the one that owns this model in `team`.",
                           field="team")
    team, _ = Team.objects.get_or_create(name=personal_team_name(actor.username))
    team.members.add(actor)
    if getattr(actor, "_registry_team_ids", None) is not None:
        actor._registry_team_ids.add(team.pk)
    return team


def is_team_member(*, actor, team_id: int) -> bool:
    """Whether the actor is in that team: from the ids the API token brought along, else one query."""
    team_ids = getattr(actor, "_registry_team_ids", None)
    if team_ids is not None:
        return team_id in team_ids
    return Team.members.through.objects.filter(team_id=team_id, user_id=actor.pk).exists()


def require_team_member(*, actor, model: RegisteredModel) -> None:
    """Raise PermissionDenied unless the actor is an ml_engineer in the model's team (or a superuser)."""
    if actor.is_superuser:
        return
    if has_role(actor, ML_ENGINEER) and is_team_member(actor=actor, team_id=model.team_id):
        return
    raise PermissionDenied(f"Model {model.name!r} belongs to team {model.team.name!r}; only ml_engineer members "
                           "of that team may change it or start work on it.", field="team")
