"""Reads of change requests and aliases that the API, the admin and the reports share."""
from django.db.models import Count, F, Prefetch, QuerySet, Window
from django.db.models.functions import RowNumber

from foundation.errors import NotFound
from governance.models import Alias, AliasChange, ChangeRequest, Decision

_CHANGE_REQUEST_RELATIONS = ("model", "from_version", "to_version", "requested_by", "analysis__dataset")


def change_requests(*, model_name: str | None = None, alias: str | None = None,
                    status: str | None = None) -> QuerySet[ChangeRequest]:
    queryset = (ChangeRequest.objects.select_related(*_CHANGE_REQUEST_RELATIONS)
                .prefetch_related(Prefetch("decisions", queryset=Decision.objects.select_related("decided_by"))))
    if model_name:
        queryset = queryset.filter(model__name=model_name)
    if alias:
        queryset = queryset.filter(alias=alias)
    if status:
        queryset = queryset.filter(status=status)
    return queryset


def get_change_request(request_id) -> ChangeRequest:
    try:
        return change_requests().get(pk=int(request_id))
    except (ChangeRequest.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"No change request with id {request_id}.") from None


def find_change_request(request_id) -> ChangeRequest | None:
    """The request, or None when it is gone (a task that outlived it exits cleanly)."""
    return change_requests().filter(pk=request_id).first()


def deployed_change_request(*, model_id: int, alias: str, version) -> ChangeRequest | None:
    """The approved change request that most recently deployed `version` to the alias."""
    return (change_requests().filter(model_id=model_id, alias=alias, to_version=version,
                                     status=ChangeRequest.Status.DEPLOYED).order_by("-deployed_at").first())


def aliases() -> QuerySet[Alias]:
    return Alias.objects.select_related("model", "version")


def aliases_of(model) -> QuerySet[Alias]:
    return aliases().filter(model=model)


def get_alias_of(model, name: str) -> Alias:
    alias = aliases_of(model).filter(name=name).first()
    if alias is None:
        raise NotFound(f"Model {model.name!r} has no alias {name!r}.")
    return alias


def alias_change_rows(alias_ids) -> QuerySet:
    """The changes of these aliases as plain rows, newest first: the API lists whole histories, and reading
    hundreds of changes as model instances costs more than the query."""
    return (AliasChange.objects.filter(alias_id__in=alias_ids).order_by("-pk")
            .values("pk", "alias_id", "kind", "change_request_id", "reason", "created_at",
                    from_number=F("from_version__number"), to_number=F("to_version__number"),
                    actor_name=F("actor__username")))


def latest_alias_change_rows(alias_ids, *, latest: int) -> QuerySet:
    """The `latest` changes of each of these aliases as plain rows, newest first, each with `total`: how many
    changes its alias has in all (so a list of aliases stays the same size however often they moved)."""
    return (AliasChange.objects.filter(alias_id__in=alias_ids)
            .annotate(recency=Window(RowNumber(), partition_by=[F("alias_id")], order_by=F("pk").desc()),
                      total=Window(Count("pk"), partition_by=[F("alias_id")]))
            .filter(recency__lte=latest).order_by("-pk")
            .values("pk", "alias_id", "kind", "change_request_id", "reason", "created_at", "total",
                    from_number=F("from_version__number"), to_number=F("to_version__number"),
                    actor_name=F("actor__username")))


def alias_history(alias: Alias) -> QuerySet[AliasChange]:
    return alias.changes.select_related("from_version", "to_version", "actor")


def rollback_targets(alias: Alias) -> list:
    """The versions a rollback of `alias` may return to (governance.services.roll_back's rule): those deployed to
    it through an approved change request, other than the one it points at now. Newest deployment first."""
    deployed = (ChangeRequest.objects.filter(model_id=alias.model_id, alias=alias.name,
                                             status=ChangeRequest.Status.DEPLOYED)
                .exclude(to_version_id=alias.version_id).select_related("to_version").order_by("-deployed_at", "-pk"))
    targets, seen = [], set()
    for request in deployed:
        if request.to_version_id not in seen:
            seen.add(request.to_version_id)
            targets.append(request.to_version)
    return targets


def default_rollback_number(alias: Alias) -> int | None:
    """The version a rollback without a named target returns to: the deployment before the current one."""
    return alias.deploy_stack[-2] if len(alias.deploy_stack) >= 2 else None
