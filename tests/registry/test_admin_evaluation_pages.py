"""Admin pages of task evaluations and distillations: every role may read them, a user without a role may not;
the version page starts an evaluation as the API does; a distillation's table marks its best candidate, and its
button opens a change request for that candidate."""
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from foundation.roles import ML_ENGINEER
from governance.models import ChangeRequest
from registry import services as registry_services
from tests.conftest import jsonl, make_user
from tests.governance.conftest import register_version
from workers.models import Analysis, Distillation, Evaluation, Job

pytestmark = pytest.mark.django_db

LABELLED = [{"text": "The bank raised its", "label": "interest"}, {"text": "The cat slept on the", "label": "warm"},
            {"text": "The fraud team blocked the", "label": "card"}, {"text": "We walked to the", "label": "warm"}]
ROLES = ["engineer", "approver", "ops_user", "regulator"]


@pytest.fixture
def versions(engineer, tiny_model_dir):
    model = registry_services.create_model(name="credit-llm", description="Credit memos", actor=engineer)
    return [register_version(model, tiny_model_dir, engineer) for _ in range(3)]


@pytest.fixture
def labelled_dataset(engineer):
    upload = SimpleUploadedFile("labelled.jsonl", jsonl(LABELLED))
    return registry_services.register_dataset(name="labelled", purpose="evaluation", uploaded_file=upload,
                                              actor=engineer)


@pytest.fixture
def training_dataset(engineer):
    upload = SimpleUploadedFile("train.jsonl", jsonl(LABELLED * 3))
    return registry_services.register_dataset(name="train", purpose="training", uploaded_file=upload, actor=engineer)


def _metric(value, stderr):
    return {"value": value, "stderr": stderr}


@pytest.fixture
def evaluation(engineer, versions, labelled_dataset):
    """A finished classification evaluation of v2 against v1, as the worker records it."""
    job = Job.objects.create(kind=Job.Kind.EVALUATION, status=Job.Status.SUCCEEDED, progress=100, created_by=engineer,
                             source_version=versions[1])
    labels = ["card", "interest", "warm"]
    per_class = {label: {"precision": _metric(0.5, 0.25), "recall": _metric(1.0, 0.0), "f1": _metric(0.6667, 0.2),
                         "support": 1 + (label == "warm")} for label in labels}
    result = {
        "task_type": "classification", "samples": 4, "seconds": 1.234, "harness": {"name": "lm-eval", "version": "0.4"},
        "metrics": {"accuracy": _metric(0.75, 0.21650635), "macro_f1": _metric(0.6111111, 0.1833)},
        "per_class": per_class, "confusion": {"labels": labels, "matrix": [[1, 0, 0], [0, 1, 0], [1, 0, 1]]},
        "reference": {"metrics": {"accuracy": _metric(1.0, 0.0), "macro_f1": _metric(1.0, 0.0)},
                      "per_class": per_class, "confusion": {"labels": labels, "matrix": [[1, 0, 0], [0, 1, 0],
                                                                                         [0, 0, 2]]}},
        "deltas": {"accuracy": {"delta": -25.0, "stderr": 21.650635},
                   "macro_f1": {"delta": -38.88889, "stderr": 18.33, "f1_relative": 0.6111111,
                                "f1_relative_stderr": 0.1833}},
    }
    evaluation = Evaluation.objects.create(candidate=versions[1], reference=versions[0], dataset=labelled_dataset,
                                           task_type="classification", job=job, created_by=engineer, result=result)
    Job.objects.filter(pk=job.pk).update(result={"evaluation": evaluation.pk})
    return evaluation


@pytest.fixture
def distillation(engineer, tiny_model_dir, versions, labelled_dataset, training_dataset):
    """A finished distillation of a teacher into credit-llm v1 at two sizes: credit-llm v2 (4 records) falls short,
    v3 (8 records) is the best candidate."""
    teacher_model = registry_services.create_model(name="teacher-llm", description="", actor=engineer)
    teacher = register_version(teacher_model, tiny_model_dir, engineer)
    job = Job.objects.create(kind=Job.Kind.DISTILLATION, status=Job.Status.SUCCEEDED, progress=100,
                             created_by=engineer, source_version=versions[0])
    student = {"model": "credit-llm", "version": 1}
    rows = [{"size": 4, "student": student, "student_id": versions[0].pk, "version": 2, "f1": 0.41234, "f1_stderr": 0.1,
             "f1_relative_to_teacher": 0.51543, "accuracy": 0.5, "latency_ms_per_sample": 12.3456, "params": 12345},
            {"size": 8, "student": student, "student_id": versions[0].pk, "version": 3, "f1": 0.76, "f1_stderr": 0.05,
             "f1_relative_to_teacher": 0.95, "accuracy": 0.75, "latency_ms_per_sample": 11.0, "params": 12345}]
    distillation = Distillation.objects.create(
        teacher=teacher, students=[versions[0].pk], dataset=training_dataset, eval_dataset=labelled_dataset,
        params={"sizes": [4, 8], "f1_relative_min": 0.9, "labelled_by": "dataset", "student_refs": [student]},
        teacher_result={"f1": 0.8, "accuracy": 0.75, "latency_ms_per_sample": 20.0, "params": 12345},
        rows=rows, best=rows[1], job=job, created_by=engineer)
    Job.objects.filter(pk=job.pk).update(result={"distillation": distillation.pk, "best": rows[1]})
    return distillation


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_the_evaluation_and_distillation_pages(client, request, role, evaluation, distillation):
    client.force_login(request.getfixturevalue(role))
    for url in ["/admin/workers/evaluation/", f"/admin/workers/evaluation/{evaluation.pk}/change/",
                "/admin/workers/distillation/", f"/admin/workers/distillation/{distillation.pk}/change/"]:
        assert client.get(url).status_code == 200, url


def test_a_user_without_a_role_cannot_read_them_and_anonymous_is_sent_to_log_in(client, no_role_user, evaluation,
                                                                                 distillation):
    urls = [f"/admin/workers/evaluation/{evaluation.pk}/change/",
            f"/admin/workers/distillation/{distillation.pk}/change/"]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.force_login(no_role_user)
    for url in urls + ["/admin/workers/evaluation/"]:
        assert client.get(url).status_code == 403, url


def test_evaluation_page_shows_metrics_with_stderr_deltas_in_points_per_class_and_the_confusion_matrix(
        client, regulator, evaluation):
    client.force_login(regulator)
    page = client.get(f"/admin/workers/evaluation/{evaluation.pk}/change/").content.decode()
    accuracy = page.split('id="metric-accuracy"')[1].split("</tr>")[0]
    assert "0.75 ± 0.22" in accuracy and "1 ± 0" in accuracy  # two significant digits of the stderr
    assert "-25 ± 22 points" in accuracy
    macro_f1 = page.split('id="metric-macro_f1"')[1].split("</tr>")[0]
    assert "-39 ± 18 points" in macro_f1 and "0.61 ± 0.18" in macro_f1
    per_class = page.split('id="evaluation-per-class"')[1].split("</table>")[0]
    assert "<code>interest</code>" in per_class and "0.50 ± 0.25" in per_class
    assert 'id="evaluation-confusion"' in page and "data:image/png;base64," in page
    assert "lm-eval 0.4" in page


def test_job_version_and_change_request_pages_link_the_evaluation(client, engineer, approver, evaluation, versions):
    client.force_login(engineer)
    link = f'href="/admin/workers/evaluation/{evaluation.pk}/change/"'
    assert link in client.get(f"/admin/workers/job/{evaluation.job_id}/change/").content.decode()
    version_page = client.get(f"/admin/registry/modelversion/{versions[1].pk}/change/").content.decode()
    evaluations = version_page.split('id="version-evaluations"')[1].split("</table>")[0]
    assert link in evaluations and "accuracy 0.75 ± 0.22 · macro-F1 0.61 ± 0.18" in evaluations
    request = ChangeRequest.objects.create(model=versions[1].model, alias="production", to_version=versions[1],
                                           justification="x", requested_by=engineer, status="pending",
                                           required_approvals=1, evaluation=evaluation,
                                           expires_at=timezone.now() + timedelta(days=7))
    client.force_login(approver)
    assert link in client.get(f"/admin/governance/changerequest/{request.pk}/change/").content.decode()
    evaluation_page = client.get(f"/admin/workers/evaluation/{evaluation.pk}/change/").content.decode()
    assert f'href="/admin/governance/changerequest/{request.pk}/change/"' in evaluation_page


def test_evaluation_form_starts_an_evaluation_and_lands_on_its_job(client, engineer, versions, labelled_dataset):
    client.force_login(engineer)
    page = client.get(f"/admin/registry/modelversion/{versions[1].pk}/change/").content.decode()
    form = page.split('id="evaluation-form"')[1].split("</form>")[0]
    assert f"#{labelled_dataset.pk} labelled (evaluation" in form
    response = client.post(f"/admin/registry/modelversion/{versions[1].pk}/evaluation/",
                           {"evaluation-dataset": labelled_dataset.pk, "evaluation-reference": versions[0].pk,
                            "evaluation-limit": 3})
    evaluation = Evaluation.objects.get(candidate=versions[1])
    assert response.status_code == 302 and response["Location"] == f"/admin/workers/job/{evaluation.job_id}/change/"
    assert evaluation.reference == versions[0] and evaluation.limit == 3 and evaluation.task_type == "classification"
    job_page = client.get(response["Location"]).content.decode()  # queued: the job page links it already
    assert (f'id="job-evaluation">This job computes <a href="/admin/workers/evaluation/{evaluation.pk}/change/"'
            in job_page)
    evaluation_page = client.get(f"/admin/workers/evaluation/{evaluation.pk}/change/").content.decode()
    assert "No result yet: the evaluation is queued" in evaluation_page


def test_evaluation_form_shows_a_wrong_purpose_dataset_error_and_starts_nothing(client, engineer, versions,
                                                                                training_dataset):
    client.force_login(engineer)
    response = client.post(f"/admin/registry/modelversion/{versions[1].pk}/evaluation/",
                           {"evaluation-dataset": training_dataset.pk, "evaluation-limit": 2})
    page = response.content.decode()
    assert response.status_code == 200 and "Nothing was started" in page
    assert "is for training; evaluations need an evaluation dataset" in page.split('class="field-dataset"')[1]
    assert 'name="evaluation-limit" value="2"' in page
    assert not Evaluation.objects.exists()


def test_evaluation_form_refuses_a_limit_below_one_as_the_api_does(client, engineer, versions, labelled_dataset):
    client.force_login(engineer)
    response = client.post(f"/admin/registry/modelversion/{versions[1].pk}/evaluation/",
                           {"evaluation-dataset": labelled_dataset.pk, "evaluation-limit": 0})
    assert response.status_code == 200 and "Nothing was started" in response.content.decode()
    assert not Evaluation.objects.exists()


def test_distillation_page_shows_the_table_with_the_best_candidate_and_the_chart(client, regulator, distillation,
                                                                                 versions):
    client.force_login(regulator)
    page = client.get(f"/admin/workers/distillation/{distillation.pk}/change/").content.decode()
    table = page.split('id="distillation-table"')[1].split("</table>")[0]
    best = table.split('id="best-candidate"')[1].split("</tr>")[0]
    assert f'href="/admin/registry/modelversion/{versions[2].pk}/change/">credit-llm v3</a>' in best
    assert "best candidate" in best and "0.95" in best and "0.760 ± 0.050" in best and "11 ms" in best
    assert "0.515" in table and "12.3 ms" in table  # the other row, rounded
    assert "labelled</a> (labelled, 4 records)" in page
    assert 'id="distillation-chart"' in page and "data:image/png;base64," in page
    assert 'id="best-candidate-form"' not in page  # a regulator may look, not deploy


def test_best_candidate_button_opens_a_change_request_for_it(client, engineer, distillation, versions):
    client.force_login(engineer)
    page = client.get(f"/admin/workers/distillation/{distillation.pk}/change/").content.decode()
    assert 'value="production"' in page.split('id="best-candidate-form"')[1].split("</form>")[0]
    response = client.post(f"/admin/workers/distillation/{distillation.pk}/change-request/",
                           {"alias": "production", "justification": ""})
    request = ChangeRequest.objects.get()
    assert response["Location"] == f"/admin/governance/changerequest/{request.pk}/change/"
    assert request.to_version == versions[2] and request.alias == "production" and request.requested_by == engineer
    assert "Best candidate of distillation" in request.justification


def test_best_candidate_button_refuses_a_bad_alias_and_an_engineer_of_another_team(client, distillation):
    outsider = make_user("olga", ML_ENGINEER, team="other-team")
    client.force_login(outsider)
    page = client.post(f"/admin/workers/distillation/{distillation.pk}/change-request/",
                       {"alias": "production"}, follow=True).content.decode()
    assert "No change request was opened" in page and "team" in page
    page = client.post(f"/admin/workers/distillation/{distillation.pk}/change-request/",
                       {"alias": "Prod!"}, follow=True).content.decode()
    assert "No change request was opened" in page
    assert not ChangeRequest.objects.exists()


# --- the analysis page: full percentile tables and a sortable per-layer table -----------------------------------

@pytest.fixture
def analysis(engineer, versions, labelled_dataset):
    from tests.governance.conftest import make_analysis

    analysis = make_analysis(reference=versions[0], candidate=versions[1], dataset=labelled_dataset, actor=engineer,
                             kl_mean=0.0123456, kl_p99=0.0987654)
    result = analysis.result
    result["kl"].update(mean_uncertainty=0.000456, median=0.00123456, p99_9=0.2345678, max=1.2345678)
    result["layers"] = [{"name": f"model.layers.{i}.mlp.down_proj", "relative_error": 0.001 * (i + 1),
                         "relative_error_propagated": 0.002 * (12 - i), "weight_relative_error": 0.0005}
                        for i in range(12)]
    Analysis.objects.filter(pk=analysis.pk).update(result=result)
    return analysis


def _layer_names(page: str) -> list[str]:
    table = page.split('id="analysis-layers"')[1].split("</table>")[0]
    return [cell.split("</code>")[0] for cell in table.split("<code>")[1:]]


def test_analysis_page_shows_the_full_kl_and_delta_p_tables_rounded(client, regulator, analysis):
    client.force_login(regulator)
    page = client.get(f"/admin/workers/analysis/{analysis.pk}/change/").content.decode()
    table = page.split('id="analysis-percentiles"')[1].split("</table>")[0]
    for label in ["mean", "minimum", "0.1st percentile", "median", "99th percentile", "99.9th percentile", "maximum"]:
        assert f'<th scope="row">{label}</th>' in table
    assert "0.01235 ± 0.00046" in table  # the mean, to two digits of its uncertainty
    assert "0.00123" in table and "0.0988" in table and "0.235" in table and "1.23" in table  # 3 significant digits
    assert "0.0987654" not in page and "1.2345678" not in page


def test_analysis_page_lists_every_layer_sorted_by_relative_error_and_sorts_on_request(client, regulator, analysis):
    client.force_login(regulator)
    url = f"/admin/workers/analysis/{analysis.pk}/change/"
    names = _layer_names(client.get(url).content.decode())
    assert len(names) == 12 and names[0] == "model.layers.11.mlp.down_proj" and names[-1].startswith("model.layers.0.")
    ascending = _layer_names(client.get(url + "?sort=error&order=asc").content.decode())
    assert ascending == names[::-1]
    by_propagated = _layer_names(client.get(url + "?sort=propagated").content.decode())
    assert by_propagated[0] == "model.layers.0.mlp.down_proj"
    by_name = _layer_names(client.get(url + "?sort=name").content.decode())
    assert by_name == [f"model.layers.{i}.mlp.down_proj" for i in range(12)]  # 10 after 9, not after 1
    page = client.get(url).content.decode()
    assert 'href="?sort=error&amp;order=asc#analysis-layers"' in page  # a second click reverses


# --- SSO links: shown while SSO is on, pages unchanged while it is off ------------------------------------------

def _sso_placeholder(request):
    from django.http import HttpResponse

    return HttpResponse("provider")


def _urls_with_sso():
    """config.urls as it is with SSO on: the two URL names the SSO links point at (sso.urls adds them only when
    OIDC settings are present at start-up, which a settings override cannot redo)."""
    from django.urls import path

    from config.urls import urlpatterns

    return [*urlpatterns, path("oidc/authenticate/", _sso_placeholder, name="oidc_authentication_init"),
            path("sso/token/", _sso_placeholder, name="sso-api-token")]


urlpatterns = _urls_with_sso()


def test_without_sso_the_admin_and_portal_login_show_no_sso_links(client, engineer):
    portal = client.get("/portal/login/").content.decode()
    assert 'id="id_password"' in portal and "sso-sign-in" not in portal and "Sign in with" not in portal
    client.force_login(engineer)
    admin_page = client.get("/admin/").content.decode()
    assert "API token" not in admin_page and "Change password" in admin_page and 'id="logout-form"' in admin_page


def test_with_sso_the_portal_login_offers_the_provider_and_the_admin_links_the_api_token(client, engineer, settings):
    settings.SSO_ENABLED, settings.OIDC_PROVIDER_NAME = True, "Bank ID"
    settings.ROOT_URLCONF = __name__
    portal = client.get("/portal/login/?next=/portal/reports/").content.decode()
    button = portal.split('id="sso-sign-in"')[1].split("</a>")[0]
    assert 'href="/oidc/authenticate/?next=%2Fportal%2Freports%2F"' in button and "Sign in with Bank ID" in button
    assert portal.index("sso-sign-in") < portal.index('id="id_password"')  # above the form
    client.force_login(engineer)
    admin_page = client.get("/admin/").content.decode()
    assert '<a href="/sso/token/">API token</a> /' in admin_page and 'id="logout-form"' in admin_page
