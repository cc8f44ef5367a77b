"""Admin flows of issue 13 in headless Chromium against a real gunicorn: the analysis pages with their charts,
job results as links, and a change request's decision buttons beside the draft report they sign. Screenshots
land in /tmp/admin-flows-*.png."""

from foundation import storage
from governance.models import ChangeRequest
from registry.models import Dataset, ModelVersion
from tests.conftest import client_for, register_sealed_version
from tests.e2e.conftest import admin_login
from tests.governance.conftest import analysis_result
from workers import charts
from workers.models import Analysis, Job

KL_EDGES = [0.0] + [10 ** (-8 + i / 4) for i in range(41)]  # as the analysis bins per-token KL


def _shot(page, name: str) -> None:
    page.screenshot(path=f"/tmp/admin-flows-{name}.png", full_page=True)


def _two_versions(e2e_users, model: str, tiny_model_dir) -> tuple[ModelVersion, ModelVersion]:
    api = client_for(e2e_users["engineer"])
    register_sealed_version(api, model, tiny_model_dir)
    register_sealed_version(api, model, tiny_model_dir)
    return (ModelVersion.objects.get(model__name=model, number=1),
            ModelVersion.objects.get(model__name=model, number=2))


def _analysis_with_charts(*, reference, candidate, actor, unique) -> Analysis:
    """A finished analysis as the worker leaves it: result, 12 measured layers and charts in object storage."""
    dataset = Dataset.objects.create(name=f"eval-{unique}", purpose="evaluation", sha256="0" * 64, records=1,
                                     size=1, record_format="text", object_key="x", created_by=actor)
    result = analysis_result(kl_mean=0.0123456, kl_p99=0.0987654, top1=0.971234, ppl_ratio=1.0123456)
    result["layers"] = [{"name": f"model.layers.{i}.mlp.down_proj", "relative_error": 0.001 * (i + 1),
                         "relative_error_propagated": 0.002 * (i + 1), "weight_relative_error": 0.0005}
                        for i in range(12)]
    counts = [0] * 41
    for index in range(16, 29):  # 1e-4 .. 1e-1 nats
        counts[index] = 1000
    result["histograms"]["kl"] = {"edges": KL_EDGES, "counts": counts}
    job = Job.objects.create(kind=Job.Kind.ANALYSIS, status=Job.Status.SUCCEEDED, progress=100, created_by=actor,
                             source_version=candidate)
    analysis = Analysis.objects.create(reference=reference, candidate=candidate, dataset=dataset, job=job,
                                       created_by=actor, result=result)
    plots = []
    for name, png in {"kl_distribution": charts.kl_histogram(result["histograms"]["kl"], mean=0.0123456,
                                                              p99=0.0987654),
                      "layer_error": charts.layer_error_bars(result["layers"])}.items():
        stored = storage.put_bytes(f"analyses/{analysis.pk}/{name}.png", png, content_type="image/png")
        plots.append({"name": name, "object_key": stored.key, "version_id": stored.version_id})
    Analysis.objects.filter(pk=analysis.pk).update(plots=plots)
    Job.objects.filter(pk=job.pk).update(result={"analysis": analysis.pk})
    return analysis


def _outside_the_event_loop(function, **kwargs):
    """Run `function` in a thread of its own: pyHanko signs with asyncio.run(), which refuses to start inside the
    event loop Playwright's sync API keeps running in the test's thread."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def call():
        try:
            return function(**kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def _images_loaded(page, selector: str) -> list[bool]:
    return page.eval_on_selector_all(selector, "images => images.map(i => i.complete && i.naturalWidth > 0)")


def test_analysis_list_and_detail_show_statistics_layers_and_charts(web_server, e2e_users, unique, tiny_model_dir,
                                                                    page):
    reference, candidate = _two_versions(e2e_users, f"an-{unique}", tiny_model_dir)
    analysis = _analysis_with_charts(reference=reference, candidate=candidate, actor=e2e_users["engineer"],
                                     unique=unique)
    admin_login(page, web_server, e2e_users["regulator"].username)

    page.goto(f"{web_server}/admin/workers/analysis/?q=an-{unique}")
    row = page.inner_text("#result_list")
    assert f"an-{unique} v2" in row and f"an-{unique} v1" in row
    assert "0.01235" in row and "0.9712" in row and "1.012" in row and "succeeded" in row
    assert page.eval_on_selector(".results", "el => el.scrollWidth <= el.clientWidth")  # every column in view
    _shot(page, "analysis-list")

    page.goto(f"{web_server}/admin/workers/analysis/{analysis.pk}/change/")
    statistics = page.inner_text("#analysis-statistics")
    assert "KL mean (nats)\t0.01235" in statistics and "KL p99\t0.09877" in statistics
    assert "0.0123456" not in statistics  # 4 significant digits, not the raw float
    layers = page.inner_text("#analysis-layers")
    assert "12 modules" in layers and layers.index("layers.11.mlp.down_proj") < layers.index("layers.0.mlp.down_proj")
    page.wait_for_load_state("networkidle")
    assert _images_loaded(page, "#analysis-charts img") == [True, True]  # 302 to storage, with the session
    assert page.get_attribute(f"a[href='/admin/registry/modelversion/{candidate.pk}/change/']", "href")
    assert page.get_attribute(f"a[href='/admin/registry/modelversion/{reference.pk}/change/']", "href")
    _shot(page, "analysis-detail")
    page.click(f"text=job {analysis.job_id}")
    page.wait_for_url(f"**/admin/workers/job/{analysis.job_id}/change/")

    page.click(f"#job-result >> text=analysis {analysis.pk}")
    page.wait_for_url(f"**/admin/workers/analysis/{analysis.pk}/change/")


def test_job_result_links_to_the_version_it_registered(web_server, e2e_users, unique, tiny_model_dir, page):
    source, registered = _two_versions(e2e_users, f"jr-{unique}", tiny_model_dir)
    job = Job.objects.create(kind=Job.Kind.QUANTIZE, status=Job.Status.SUCCEEDED, progress=100,
                             created_by=e2e_users["engineer"], source_version=source,
                             result={"model": f"jr-{unique}", "version": 2})
    admin_login(page, web_server, e2e_users["engineer"].username)

    page.goto(f"{web_server}/admin/workers/job/{job.pk}/change/")
    assert "{'model'" not in page.inner_text("#content")  # no Python dict on the page
    _shot(page, "job-result-links")
    page.click(f".field-result_links >> text=jr-{unique} v2")
    page.wait_for_url(f"**/admin/registry/modelversion/{registered.pk}/change/")


def test_reject_is_a_confirmed_danger_button_beside_the_draft_report(web_server, e2e_users, unique, tiny_model_dir,
                                                                     page):
    from reports.services import update_change_impact_report

    api = client_for(e2e_users["engineer"])
    register_sealed_version(api, f"cr-{unique}", tiny_model_dir)
    request_id = api.post("/api/v1/change-requests/", {"model": f"cr-{unique}", "alias": "production", "version": 1,
                                                       "justification": "first release"}, format="json").json()["id"]
    report = _outside_the_event_loop(update_change_impact_report, change_request_id=request_id)
    admin_login(page, web_server, e2e_users["approver"].username)

    page.goto(f"{web_server}/admin/governance/changerequest/{request_id}/change/")
    link = page.locator("#draft-report a")
    assert link.get_attribute("href") == f"/api/v1/reports/{report.pk}/pdf"
    pdf = page.request.get(f"{web_server}/api/v1/reports/{report.pk}/pdf")
    assert pdf.ok and pdf.body().startswith(b"%PDF")
    colour = "el => getComputedStyle(el).color + '/' + getComputedStyle(el).backgroundColor"
    assert page.eval_on_selector("input[name=_approve]", colour) != page.eval_on_selector("input[name=_reject]",
                                                                                          colour)
    _shot(page, "change-request-decide")

    messages = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.dismiss()))
    page.click("input[name=_reject]")
    assert "Reject change request" in messages[0]
    assert ChangeRequest.objects.get(pk=request_id).decisions.count() == 0  # dismissed: nothing recorded

    page.fill("#decide textarea[name=comment]", "no evidence of evaluation")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("input[name=_reject]")
    page.wait_for_selector("text=Recorded your reject")
    assert "no evidence of evaluation" in page.inner_text("#decisions")
