"""API token authentication that loads the user, their roles (and what subclasses add) in one query.

Every API request checks a role, and every write a team: DRF's TokenAuthentication reads the token with its user
and the checks then read the user's groups and teams, a round trip each. Here they all come back from one plain
SQL statement (no ORM query to compile per request), and land where the checks look for them: the roles where
foundation.roles.user_roles looks; whatever a subclass adds (registry adds team ids) under its attribute name.
"""
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

ROLE_NAMES_OF_USER = ("SELECT array(SELECT g.name FROM auth_user_groups ug JOIN auth_group g ON g.id = ug.group_id "
                      "WHERE ug.user_id = u.id)")


class TokenWithRolesAuthentication(TokenAuthentication):
    # (attribute set on the user, SQL giving one array for the user `u`); subclasses extend the tuple.
    user_arrays: tuple[tuple[str, str], ...] = (("_registry_roles", ROLE_NAMES_OF_USER),)

    def authenticate_credentials(self, key):
        user_model = get_user_model()
        columns = [field.column for field in user_model._meta.concrete_fields]
        arrays = ", ".join(f"({sql})" for _, sql in self.user_arrays)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {', '.join('u.' + column for column in columns)}, {arrays} "
                f"FROM {self.get_model()._meta.db_table} t JOIN {user_model._meta.db_table} u ON u.id = t.user_id "
                "WHERE t.key = %s", [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        user = user_model.from_db(connection.alias, [field.attname for field in user_model._meta.concrete_fields],
                                  row[:len(columns)])
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        for (attribute, _), values in zip(self.user_arrays, row[len(columns):], strict=True):
            setattr(user, attribute, set(values))
        return user, self.get_model()(key=key, user=user)
