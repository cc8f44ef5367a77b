"""Task evaluations and distillations in the admin, in headless Chromium against a real gunicorn and worker: an ML
engineer starts an evaluation from the version page on a tiny model and a tiny labelled set and reads its page; a
dataset the evaluation cannot use is refused on the form; a distillation's best candidate goes to a change
request in one click; the analysis page sorts its layers. Screenshots land in /tmp/ui_shots2/."""
from pathlib import Path

import pytest

from governance.models import ChangeRequest
from registry.models import Dataset, ModelVersion
from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import admin_login, wait_for_job
from tests.e2e.test_evaluation_jobs import LABELLED
from tests.governance.conftest import make_analysis
from workers.models import Analysis, Distillation, Job
from workers.pipelines.tiny_model import build_tiny_llama

SHOTS = Path("/tmp/ui_shots2")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _dataset(api, name: str, purpose: str, records: list[dict]) -> int:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post("/api/v1/datasets/", {"name": name, "purpose": purpose,
                                              "file": SimpleUploadedFile(f"{name}.jsonl", jsonl(records))},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def _version(model: str, number: int) -> ModelVersion:
    return ModelVersion.objects.select_related("model").get(model__name=model, number=number)


def test_engineer_starts_an_evaluation_from_the_version_page_and_reads_its_page(worker, web_server, e2e_users, unique,
                                                                              tiny_model_dir, tmp_path, page):
    api = client_for(e2e_users["engineer"])
    model = f"ev-{unique}"
    register_sealed_version(api, model, build_tiny_llama(tmp_path / "trained", seed=0, train_steps=20))
    register_sealed_version(api, model, tiny_model_dir)
    training = _dataset(api, f"train-{unique}", "training", [{"prompt": "Q?", "completion": " A"}] * 3)
    unlabelled = _dataset(api, f"texts-{unique}", "evaluation", [{"text": "The bank raised its rate."}] * 3)
    labelled = _dataset(api, f"labelled-{unique}", "evaluation", LABELLED)
    candidate = _version(model, 2)
    admin_login(page, web_server, e2e_users["engineer"].username)

    page.goto(f"{web_server}/admin/registry/modelversion/{candidate.pk}/change/")
    form = page.locator("#evaluation-form")
    assert f"labelled-{unique}" in form.inner_text() and f"train-{unique}" not in form.inner_text()
    assert "No task evaluations of this version yet" in page.inner_text("#version-evaluations")
    _shot(page, "version-page-evaluation-form")

    # A training dataset is not offered; posted anyway (a stale page, a crafted form), it is refused on the form.
    form.locator("select[name=evaluation-dataset]").evaluate(
        f"s => s.add(new Option('train-{unique}', '{training}'))")
    form.locator("select[name=evaluation-dataset]").select_option(str(training))
    form.locator("input[name=evaluation-limit]").fill("5")
    form.locator("input[type=submit]").click()
    page.wait_for_selector("text=Nothing was started")
    refused = page.inner_text("#evaluation-refused .field-dataset")
    assert "is for training; evaluations need an evaluation dataset" in refused
    assert page.input_value("input[name=evaluation-limit]") == "5"  # what was typed stays
    _shot(page, "evaluation-form-refused-purpose")

    # Records that fit no task type: the 422 names the first one, on the form.
    page.select_option("select[name=evaluation-dataset]", str(unlabelled))
    page.click("#evaluation-refused input[type=submit]")
    page.wait_for_selector("text=Nothing was started")
    assert "cannot be evaluated" in page.inner_text("#evaluation-refused .field-dataset")

    page.select_option("select[name=evaluation-dataset]", str(labelled))
    page.select_option("select[name=evaluation-reference]", label="v1 (upload) · upload")
    page.fill("input[name=evaluation-limit]", "")
    page.click("#evaluation-refused input[type=submit]")
    page.wait_for_url("**/admin/workers/job/*/change/")
    assert "queued as job" in page.inner_text(".messagelist")
    job_id = int(page.url.rstrip("/").split("/")[-2])
    job = wait_for_job(api, job_id)
    assert job["status"] == "succeeded", job["error"]
    page.reload()
    _shot(page, "evaluation-job")
    page.click("#job-result >> text=evaluation")
    page.wait_for_url("**/admin/workers/evaluation/*/change/")

    metrics = page.inner_text("#evaluation-metrics")
    assert "accuracy" in metrics and "macro-F1" in metrics and "±" in metrics
    assert "reference v1" in metrics.lower() and "points" in metrics.lower()  # the deltas against v1
    assert "classification, 10 records" in metrics
    per_class = page.inner_text("#evaluation-per-class")
    assert all(label in per_class for label in ("interest", "card", "warm", "door"))
    assert page.eval_on_selector("#evaluation-confusion img", "i => i.complete && i.naturalWidth > 0")
    assert "lm-eval" in page.inner_text(".field-harness")
    _shot(page, "evaluation-detail")

    page.goto(f"{web_server}/admin/workers/evaluation/?q={model}")
    row = page.inner_text("#result_list")
    assert f"{model} v2 vs v1" in row and "classification" in row and "accuracy" in row and "pts" in row
    _shot(page, "evaluation-list")
    assert page.eval_on_selector(".results", "el => el.scrollWidth <= el.clientWidth")  # every column in view

    page.goto(f"{web_server}/admin/registry/modelversion/{candidate.pk}/change/")
    evaluations = page.inner_text("#version-evaluations")
    assert "succeeded" in evaluations and f"labelled-{unique}" in evaluations
    _shot(page, "version-page-evaluations")


@pytest.fixture
def distillation(e2e_users, unique, tiny_model_dir):
    """A finished distillation as its job leaves it: a teacher, one student at two sizes, the larger the best."""
    api = client_for(e2e_users["engineer"])
    engineer = e2e_users["engineer"]
    for _ in range(3):
        register_sealed_version(api, f"student-{unique}", tiny_model_dir)
    register_sealed_version(api, f"teacher-{unique}", tiny_model_dir)
    student, teacher = _version(f"student-{unique}", 1), _version(f"teacher-{unique}", 1)
    train = Dataset.objects.get(pk=_dataset(api, f"train-{unique}", "training", LABELLED * 3))
    labelled = Dataset.objects.get(pk=_dataset(api, f"labelled-{unique}", "evaluation", LABELLED))
    job = Job.objects.create(kind=Job.Kind.DISTILLATION, status=Job.Status.SUCCEEDED, progress=100,
                             created_by=engineer, source_version=student)
    ref = {"model": student.model.name, "version": 1}
    rows = [{"size": size, "student": ref, "student_id": student.pk, "version": number, "f1": f1, "f1_stderr": 0.08,
             "f1_relative_to_teacher": f1 / 0.8, "accuracy": f1 + 0.05, "latency_ms_per_sample": 14.2,
             "params": 1_234_567} for size, number, f1 in ((10, 2, 0.5234), (20, 3, 0.7612))]
    return Distillation.objects.create(
        teacher=teacher, students=[student.pk], dataset=train, eval_dataset=labelled,
        params={"sizes": [10, 20], "f1_relative_min": 0.9, "labelled_by": "dataset", "student_refs": [ref]},
        teacher_result={"f1": 0.8, "accuracy": 0.85, "latency_ms_per_sample": 15.0, "params": 1_234_567},
        rows=rows, best=rows[1], job=job, created_by=engineer)


def test_engineer_opens_a_change_request_for_the_best_distillation_candidate(web_server, e2e_users, unique,
                                                                             distillation, page):
    admin_login(page, web_server, e2e_users["engineer"].username)
    page.goto(f"{web_server}/admin/workers/distillation/{distillation.pk}/change/")
    best = page.inner_text("#best-candidate")
    assert f"student-{unique} v3" in best and "best candidate" in best and "0.951" in best
    assert page.eval_on_selector("#distillation-chart img", "i => i.complete && i.naturalWidth > 0")
    assert page.input_value("#best-candidate-form input[name=alias]") == "production"
    _shot(page, "distillation-detail")
    page.goto(f"{web_server}/admin/workers/distillation/")
    assert f"student-{unique} v3" in page.inner_text("#result_list")
    _shot(page, "distillation-list")

    page.goto(f"{web_server}/admin/workers/distillation/{distillation.pk}/change/")
    page.click("text=Open a change request for the best candidate")
    page.wait_for_url("**/admin/governance/changerequest/*/change/")
    request = ChangeRequest.objects.get(model__name=f"student-{unique}")
    assert request.to_version.number == 3 and request.alias == "production"
    assert request.requested_by == e2e_users["engineer"]
    assert "opened" in page.inner_text(".messagelist")
    _shot(page, "distillation-change-request")


def test_analysis_page_shows_the_percentiles_and_sorts_the_layers(web_server, e2e_users, unique, tiny_model_dir,
                                                                  page):
    api = client_for(e2e_users["engineer"])
    register_sealed_version(api, f"an-{unique}", tiny_model_dir)
    register_sealed_version(api, f"an-{unique}", tiny_model_dir)
    dataset = Dataset.objects.get(pk=_dataset(api, f"eval-{unique}", "evaluation", [{"text": "a b c"}] * 3))
    analysis = make_analysis(reference=_version(f"an-{unique}", 1), candidate=_version(f"an-{unique}", 2),
                             dataset=dataset, actor=e2e_users["engineer"], kl_mean=0.00123456, kl_p99=0.0123456)
    result = analysis.result
    result["kl"].update(mean_uncertainty=0.0000456, median=0.000345678, max=0.2345678)
    result["layers"] = [{"name": f"model.layers.{i}.mlp.down_proj", "relative_error": 0.001 * (i + 1),
                         "relative_error_propagated": 0.002 * (12 - i), "weight_relative_error": 0.0005 * i}
                        for i in range(12)]
    Analysis.objects.filter(pk=analysis.pk).update(result=result)
    admin_login(page, web_server, e2e_users["regulator"].username)
    page.goto(f"{web_server}/admin/workers/analysis/{analysis.pk}/change/")
    percentiles = page.inner_text("#analysis-percentiles")
    assert "99.9th percentile" in percentiles and "0.001235 ± 0.000046" in percentiles and "0.0123" in percentiles
    first = page.locator("#analysis-layers tbody tr").first.inner_text()
    assert "layers.11." in first and page.locator("#analysis-layers tbody tr").count() == 12
    _shot(page, "analysis-detail")
    page.click("#analysis-layers th >> text=Relative error")  # the current sort: a click reverses it
    assert "layers.0." in page.locator("#analysis-layers tbody tr").first.inner_text()
    page.click("#analysis-layers th >> text=Module")
    assert "layers.0." in page.locator("#analysis-layers tbody tr").first.inner_text()
    _shot(page, "analysis-layers-sorted")
