"""sso.services: what one sign-on changes for a user, and the API token page's service."""
import pytest
from django.contrib.auth.models import Group, User
from django.test import override_settings
from rest_framework.authtoken.models import Token

from foundation.models import AuditEvent
from registry.models import Team
from sso import services
from tests.conftest import make_user

MAPPING = {"OIDC_GROUPS_CLAIM": "groups", "OIDC_ROLE_MAP": {"eng": "ml_engineer", "reg": "regulator"},
           "OIDC_TEAM_MAP": {}, "OIDC_TEAM_PREFIX": "team:"}


@pytest.fixture(autouse=True)
def mapping():
    with override_settings(**MAPPING):
        yield


@pytest.mark.django_db
def test_first_sign_in_creates_user_without_password_with_mapped_roles_and_teams():
    user = services.sign_in_from_claims(username="sam", claims={"email": "sam@bank.example", "given_name": "Sam",
                                                                "groups": ["eng", "team:risk-models"]})
    assert user.email == "sam@bank.example" and user.first_name == "Sam"
    assert not user.has_usable_password() and user.is_staff and not user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == ["ml_engineer"]
    assert list(user.model_teams.values_list("name", flat=True)) == ["risk-models"]
    event = AuditEvent.objects.get(action="user.sso_login")
    assert event.before is None and event.after["created"] is True
    assert event.after["claim"] == {"groups": ["eng", "team:risk-models"]}


@pytest.mark.django_db
def test_next_sign_in_replaces_roles_and_teams_but_keeps_other_groups_and_superuser():
    user = make_user("rita", "ml_engineer", superuser=True, team="risk-models")
    other = Group.objects.create(name="newsletter")
    user.groups.add(other)

    services.sign_in_from_claims(username="rita", claims={"groups": ["reg"]})

    user = User.objects.get(pk=user.pk)
    assert sorted(user.groups.values_list("name", flat=True)) == ["newsletter", "regulator"]
    assert not user.model_teams.exists()
    assert user.is_superuser and user.has_usable_password()  # never taken (nor granted) by claims
    event = AuditEvent.objects.get(action="user.sso_login")
    assert event.before["roles"] == ["ml_engineer"] and event.after["roles"] == ["regulator"]
    assert event.before["teams"] == ["risk-models"] and event.after["teams"] == []


@pytest.mark.django_db
def test_user_whose_roles_are_all_taken_away_loses_admin_access():
    make_user("eve", "approver")
    user = services.sign_in_from_claims(username="eve", claims={"groups": ["unmapped"]})
    assert not user.is_staff and not user.groups.exists()


@pytest.mark.django_db
def test_team_named_by_an_invalid_claim_value_is_not_created_and_is_audited():
    services.sign_in_from_claims(username="tom", claims={"groups": ["eng", "team:Bad Name"]})
    assert not Team.objects.exists()
    assert AuditEvent.objects.get(action="user.sso_login").after["refused_teams"] == ["Bad Name"]


@pytest.mark.django_db
def test_new_api_token_replaces_the_previous_one():
    user = make_user("tia", "ml_engineer")
    first = services.create_api_token(user=user)
    second = services.create_api_token(user=user)
    assert list(Token.objects.filter(user=user).values_list("key", flat=True)) == [second.key] != [first.key]
    events = AuditEvent.objects.filter(action="user.api_token_created").order_by("sequence")
    assert [event.after for event in events] == [{"replaced_previous_token": False},
                                                {"replaced_previous_token": True}]
    assert all(second.key not in str(event.after) for event in events)
