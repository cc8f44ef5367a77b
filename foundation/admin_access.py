"""Admin access by product role, shared by every admin page."""
from django.contrib import messages
from django.http import HttpResponseRedirect

from foundation.errors import DomainError
from foundation.roles import ALL_ROLES, ML_ENGINEER, has_role


class RoleAccessMixin:
    """Admin access by product role instead of per-model Django permissions; rows are never edited in place."""

    write_roles: tuple[str, ...] = (ML_ENGINEER,)

    def has_module_permission(self, request):
        return has_role(request.user, *ALL_ROLES)

    def has_view_permission(self, request, obj=None):
        return has_role(request.user, *ALL_ROLES)

    def has_add_permission(self, request):
        return has_role(request.user, *self.write_roles)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def add_view(self, request, form_url="", extra_context=None):
        # save_model calls a service; its refusal (duplicate name, bad file...) is shown, not a 500.
        try:
            return super().add_view(request, form_url, extra_context)
        except DomainError as error:
            messages.error(request, error.message)
            return HttpResponseRedirect(request.path)
