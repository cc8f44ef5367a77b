"""SSO is off unless OIDC_RP_CLIENT_ID is set: the admin login page is Django's, with no provider button."""
import pytest
from django.test import Client


@pytest.mark.django_db
def test_login_page_without_sso_offers_only_the_password_form():
    page = Client().get("/admin/login/")
    assert page.status_code == 200
    assert b'id="id_password"' in page.content
    assert b"sso-sign-in" not in page.content and b"Sign in with" not in page.content
    assert b"Password sign-in is turned off" not in page.content


@pytest.mark.django_db
def test_sso_urls_do_not_exist_without_sso():
    assert Client().get("/sso/token/", HTTP_ACCEPT="application/json").status_code == 404
    assert Client().get("/oidc/authenticate/", HTTP_ACCEPT="application/json").status_code == 404
