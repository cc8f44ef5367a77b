"""The top bar shared by every admin page: the admin, the regulator portal and the API docs, by role."""
from django import template

from foundation.roles import ALL_ROLES, REGULATOR, has_role

register = template.Library()


@register.simple_tag(takes_context=True)
def product_links(context) -> list[dict]:
    """Links to the product's three faces the signed-in user may open; the one in view is marked current."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    path = request.path
    links = [{"label": "Admin", "url": "/admin/", "current": path.startswith("/admin/")}]
    if has_role(user, REGULATOR):
        links.append({"label": "Regulator portal", "url": "/portal/", "current": path.startswith("/portal/")})
    if has_role(user, *ALL_ROLES):
        links.append({"label": "API docs", "url": "/api/docs/", "current": False})
    return links
