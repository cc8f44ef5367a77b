"""The mapping from the provider's groups claim to our roles and teams."""
import importlib

import pytest
from django.core.exceptions import ImproperlyConfigured

from sso.claims import access_from_claims

ROLE_MAP = {"cn=ml,ou=registry": "ml_engineer", "cn=regulators,ou=registry": "regulator"}


def test_mapped_claim_values_grant_roles_and_others_are_ignored():
    access = access_from_claims({"groups": ["cn=ml,ou=registry", "cn=admins", "superuser"]}, groups_claim="groups",
                                role_map=ROLE_MAP, team_map={}, team_prefix="")
    assert access.roles == {"ml_engineer"}
    assert access.teams is None  # no team mapping configured: teams stay as the admin manages them


def test_without_role_map_role_names_grant_themselves():
    access = access_from_claims({"roles": ["approver", "ops", "owner"]}, groups_claim="roles", role_map={},
                                team_map={}, team_prefix="")
    assert access.roles == {"approver", "ops"}


def test_a_single_string_claim_counts_as_one_value():
    access = access_from_claims({"groups": "regulator"}, groups_claim="groups", role_map={}, team_map={},
                                team_prefix="")
    assert access.roles == {"regulator"}


def test_teams_come_from_the_team_map_and_the_prefix_rule():
    access = access_from_claims({"groups": ["team:risk-models", "CreditRisk", "team:Not A Slug", "other"]},
                                groups_claim="groups", role_map={}, team_map={"CreditRisk": "credit"},
                                team_prefix="team:")
    assert access.teams == {"risk-models", "credit"}
    assert access.refused_teams == ("Not A Slug",)


def test_missing_claim_grants_nothing():
    access = access_from_claims({}, groups_claim="groups", role_map=ROLE_MAP, team_map={}, team_prefix="team:")
    assert access.roles == frozenset() and access.teams == frozenset()


@pytest.mark.parametrize("name, value, message", [
    ("OIDC_ROLE_MAP", '{"admins": "superuser"}', "the roles are ml_engineer"),
    ("OIDC_ROLE_MAP", '["ml_engineer"]', "must be a JSON object"),
    ("OIDC_TEAM_MAP", '{"a": 1}', "must be a JSON object"),
    ("OIDC_DISABLE_LOCAL_PASSWORDS", "1", "nobody could log in"),
    ("OIDC_RP_CLIENT_ID", "registry", "the provider is not"),
])
def test_bad_sso_settings_fail_at_start_with_a_message(monkeypatch, name, value, message):
    import config.settings_sso

    monkeypatch.setenv("OIDC_RP_CLIENT_SECRET", "not-used")
    monkeypatch.setenv(name, value)
    try:
        with pytest.raises(ImproperlyConfigured, match=message):
            importlib.reload(config.settings_sso)
    finally:
        monkeypatch.undo()
        importlib.reload(config.settings_sso)
