"""The four roles of the product, as Django groups created by migration registry/0003."""
ML_ENGINEER = "ml_engineer"
APPROVER = "approver"
OPS = "ops"
REGULATOR = "regulator"
ALL_ROLES = (ML_ENGINEER, APPROVER, OPS, REGULATOR)


def user_roles(user) -> set[str]:
    if not user or not user.is_authenticated:
        return set()
    cached = getattr(user, "_registry_roles", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))
        user._registry_roles = cached
    return cached


def has_role(user, *roles: str) -> bool:
    """Superusers hold every role (separation of duties is checked separately, in the services)."""
    if not user or not user.is_authenticated:
        return False
    return user.is_superuser or bool(user_roles(user) & set(roles))
