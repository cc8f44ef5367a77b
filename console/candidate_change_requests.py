"""The "Deploy the ... candidate" button that a distillation's and a quantization sweep's page share: it opens a
change request for the version the experiment picked, against the alias named in the form, through
governance.services (the API's door, so the role and team checks apply). A refusal goes back to the experiment's
page with the reason.
"""
from django.contrib import messages
from django.http import HttpResponseRedirect
from django.urls import reverse

from console.forms import add_domain_error, add_serializer_errors
from foundation.errors import DomainError
from foundation.roles import ML_ENGINEER, has_role
from governance import services as governance_services
from governance.api import ChangeRequestOpenSerializer


def open_candidate_change_request(request, *, experiment, candidate_version, default_justification, form_class,
                                  page_url: str, no_candidate: str, dataset_id: int | None = None):
    """Open a change request for `candidate_version(experiment)` from the posted form (a blank justification
    becomes `default_justification(experiment)`; `dataset_id`, when given, is the gates' evaluation dataset)."""
    back = HttpResponseRedirect(page_url)
    if request.method != "POST":
        return back
    if not has_role(request.user, ML_ENGINEER):
        messages.error(request, "Opening a change request needs the ml_engineer role.")
        return back
    version = candidate_version(experiment)
    if version is None:
        messages.error(request, no_candidate)
        return back
    form = form_class(request.POST)
    data = None
    if form.is_valid():
        justification = form.cleaned_data["justification"].strip() or default_justification(experiment)
        data = add_serializer_errors(form, ChangeRequestOpenSerializer, {
            "model": version.model.name, "version": version.number, "alias": form.cleaned_data["alias"],
            "justification": justification, **({"dataset": dataset_id} if dataset_id is not None else {})})
    if data:
        try:
            change_request = governance_services.open_change_request(
                model=version.model, alias=data["alias"], version_number=data["version"],
                justification=data["justification"], dataset_id=data.get("dataset"), actor=request.user)
            messages.success(request, f"Change request #{change_request.pk} opened: {version.model.name}@"
                                      f"{change_request.alias} → v{version.number} ({change_request.status}).")
            return HttpResponseRedirect(reverse("admin:governance_changerequest_change", args=[change_request.pk]))
        except DomainError as error:
            add_domain_error(form, error)
    # Refused (a bad alias, the alias already there, not on the model's team): the reason on the page.
    messages.error(request, "No change request was opened: " + " ".join(
        str(error) for errors in form.errors.values() for error in errors))
    return back
