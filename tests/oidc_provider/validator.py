"""Adds the user's name, e-mail and groups (their Django groups at the provider) to the ID token and userinfo."""
from oauth2_provider.oauth2_validators import OAuth2Validator


class GroupsClaimValidator(OAuth2Validator):
    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "groups": "profile"}

    def get_additional_claims(self, request):
        user = request.user
        return {
            "preferred_username": user.username,
            "name": user.get_full_name() or user.username,
            "email": user.email,
            "groups": sorted(user.groups.values_list("name", flat=True)),
        }
