"""Role checks for every endpoint: reads need any of the four roles, writes need the role that owns them."""
from rest_framework.permissions import SAFE_METHODS, BasePermission

from foundation.roles import ALL_ROLES, ML_ENGINEER, has_role


def role_permission(*write_roles: str, read_roles: tuple[str, ...] = ALL_ROLES):
    class RolePermission(BasePermission):
        message = (f"This needs the role {' or '.join(write_roles)}." if write_roles
                   else "This needs one of the roles ml_engineer, approver, ops or regulator.")

        def has_permission(self, request, view):
            if request.method in SAFE_METHODS:
                allowed = has_role(request.user, *read_roles)
                if not allowed:
                    self.message = f"Reading this needs one of the roles {', '.join(read_roles)}."
                return allowed
            return has_role(request.user, *write_roles)

    RolePermission.__name__ = f"Requires_{'_or_'.join(write_roles) or 'read'}"
    return RolePermission


EngineerWrites = role_permission(ML_ENGINEER)
