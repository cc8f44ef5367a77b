"""Signing in to the admin UI through the bank's OIDC provider, in headless Chromium, against a real provider."""
import pytest
import requests
from django.contrib.auth.models import User

from foundation.models import AuditEvent
from foundation.roles import ML_ENGINEER
from registry.models import Team
from tests.conftest import make_user
from tests.sso.conftest import sign_in_with_provider

pytestmark = pytest.mark.e2e

ADD_MODEL = "/admin/registry/registeredmodel/add/"


def test_engineer_signs_in_with_provider_and_lands_with_mapped_role_and_team(sso_web_server, oidc_provider, browser,
                                                                              unique, tmp_path):
    server = sso_web_server()
    username, team = f"sam-{unique}", f"risk-{unique}"
    oidc_provider.set_user(username, password="provider-pw-1", groups=["registry-engineers", f"team:{team}", "admin"])

    page = browser.new_page()
    page.goto(f"{server.base_url}/admin/login/")
    assert page.inner_text("#sso-sign-in") == "Sign in with Bank ID"
    assert page.is_visible("#id_password")  # local passwords are still allowed here
    page.screenshot(path=str(tmp_path / "login-page.png"), full_page=True)

    sign_in_with_provider(page, server.base_url, username, "provider-pw-1")
    assert page.is_visible(f'a.addlink[href="{ADD_MODEL}"]')  # engineers register models
    add_page = page.goto(f"{server.base_url}{ADD_MODEL}")
    assert add_page.status == 200
    assert team in page.inner_text("#id_team")  # the team the provider named is theirs

    user = User.objects.get(username=username)
    assert sorted(user.groups.values_list("name", flat=True)) == [ML_ENGINEER]
    assert not user.is_superuser and not user.has_usable_password()
    login = AuditEvent.objects.filter(action="user.sso_login", actor_name=username).get()
    assert login.after["roles"] == [ML_ENGINEER] and login.after["teams"] == [team]
    # The client secret never reaches the log.
    assert server.client_secret not in server.log()


def test_groups_changed_at_the_provider_change_roles_and_teams_at_next_login(sso_web_server, oidc_provider, browser,
                                                                            unique):
    server = sso_web_server()
    username, team = f"pat-{unique}", f"credit-{unique}"
    oidc_provider.set_user(username, password="provider-pw-2", groups=["registry-engineers", f"team:{team}"])
    first = browser.new_context()
    sign_in_with_provider(first.new_page(), server.base_url, username, "provider-pw-2")
    first.close()
    assert list(Team.objects.get(name=team).members.values_list("username", flat=True)) == [username]

    # The directory moves the user from the engineers to the regulators.
    oidc_provider.set_user(username, password="provider-pw-2", groups=["registry-regulators"])
    second = browser.new_context()
    page = second.new_page()
    sign_in_with_provider(page, server.base_url, username, "provider-pw-2")
    assert not page.is_visible(f'a.addlink[href="{ADD_MODEL}"]')
    assert page.goto(f"{server.base_url}{ADD_MODEL}").status == 403
    assert page.goto(f"{server.base_url}/admin/foundation/auditevent/").status == 200  # regulators read the trail
    second.close()

    user = User.objects.get(username=username)
    assert list(user.groups.values_list("name", flat=True)) == ["regulator"]
    assert not Team.objects.get(name=team).members.filter(pk=user.pk).exists()
    logins = list(AuditEvent.objects.filter(action="user.sso_login", actor_name=username).order_by("sequence"))
    assert [event.after["roles"] for event in logins] == [[ML_ENGINEER], ["regulator"]]
    assert logins[1].before["teams"] == [team] and logins[1].after["teams"] == []


def test_sso_user_creates_api_token_that_works_on_the_api(sso_web_server, oidc_provider, browser, unique, tmp_path):
    server = sso_web_server()
    username = f"tia-{unique}"
    oidc_provider.set_user(username, password="provider-pw-3", groups=["registry-engineers"])
    page = browser.new_page()
    sign_in_with_provider(page, server.base_url, username, "provider-pw-3")

    page.goto(f"{server.base_url}/sso/token/")
    page.click("#create-token")
    token = page.inner_text("#api-token").strip()
    page.screenshot(path=str(tmp_path / "token-page.png"), full_page=True)
    page.goto(f"{server.base_url}/sso/token/")
    assert token not in page.content()  # shown once

    answer = requests.get(f"{server.base_url}/api/v1/models/", headers={"Authorization": f"Token {token}"},
                          timeout=30)
    assert answer.status_code == 200 and isinstance(answer.json(), list)
    assert requests.get(f"{server.base_url}/api/v1/models/", timeout=30).status_code == 401


def test_local_password_login_is_refused_when_local_passwords_are_turned_off(sso_web_server, oidc_provider, browser,
                                                                            unique, tmp_path):
    server = sso_web_server(OIDC_DISABLE_LOCAL_PASSWORDS="1")
    local = make_user(f"lou-{unique}", ML_ENGINEER)

    page = browser.new_page()
    page.goto(f"{server.base_url}/admin/login/")
    assert page.is_visible("#sso-sign-in") and page.is_visible("#local-passwords-off")
    assert not page.is_visible("#id_password")
    page.screenshot(path=str(tmp_path / "login-page-sso-only.png"), full_page=True)

    session = requests.Session()
    session.get(f"{server.base_url}/admin/login/", timeout=30)
    refused = session.post(f"{server.base_url}/admin/login/?next=/admin/", timeout=30, allow_redirects=False,
                           headers={"Accept": "application/json"},
                           data={"username": local.username, "password": f"{local.username}-password",
                                 "csrfmiddlewaretoken": session.cookies.get("csrftoken", ""), "next": "/admin/"})
    assert refused.status_code == 403
    assert refused.json()["error"] == "local_passwords_disabled"
    assert "Bank ID" in refused.json()["detail"]
    assert session.get(f"{server.base_url}/admin/", timeout=30, allow_redirects=False).status_code == 302

    # The regulator portal's login sends browsers to the provider instead of asking for a password.
    portal = requests.get(f"{server.base_url}/portal/login/", timeout=30, allow_redirects=False)
    assert portal.status_code == 302 and portal.headers["Location"].startswith("/oidc/authenticate/")

    # Scripts keep working with API tokens.
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=local)
    answer = requests.get(f"{server.base_url}/api/v1/models/", headers={"Authorization": f"Token {token.key}"},
                          timeout=30)
    assert answer.status_code == 200

    # SSO itself still signs people in, the portal's regulators too.
    username = f"ada-{unique}"
    oidc_provider.set_user(username, password="provider-pw-4", groups=["registry-regulators"])
    page.goto(f"{server.base_url}/portal/")
    page.wait_for_selector("#provider-sign-in")
    page.fill("#id_username", username)
    page.fill("#id_password", "provider-pw-4")
    page.click("#provider-sign-in")
    page.wait_for_url(f"{server.base_url}/portal/")
    assert username in page.content()
    assert User.objects.get(username=username).groups.get().name == "regulator"


def test_registry_starts_and_says_so_when_the_provider_is_unreachable(sso_web_server, browser):
    from tests.e2e.conftest import _free_port

    server = sso_web_server(OIDC_OP_DISCOVERY_URL=f"http://127.0.0.1:{_free_port()}/o")
    page = browser.new_page()
    page.goto(f"{server.base_url}/admin/login/")
    with page.expect_response(lambda response: "/oidc/authenticate/" in response.url) as answer:
        page.click("#sso-sign-in")
    assert answer.value.status == 503
    assert "discovery document" in page.inner_text(".errornote")
    page.click("text=Back to the login page")
    assert page.is_visible("#id_password")  # local passwords still work meanwhile
