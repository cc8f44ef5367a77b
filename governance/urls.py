from django.urls import path

from governance import api

urlpatterns = [
    path("change-requests/", api.ChangeRequestListView.as_view(), name="change-request-list"),
    path("change-requests/<int:request_id>/", api.ChangeRequestDetailView.as_view(), name="change-request-detail"),
    path("change-requests/<int:request_id>/decisions", api.DecisionView.as_view(), name="change-request-decide"),
    path("change-requests/<int:request_id>/withdraw", api.WithdrawView.as_view(), name="change-request-withdraw"),
    path("models/<str:name>/policies/<str:alias>", api.PolicyView.as_view(), name="policy"),
    path("models/<str:name>/aliases/", api.AliasListView.as_view(), name="alias-list"),
    path("models/<str:name>/aliases/<str:alias>", api.AliasDetailView.as_view(), name="alias-detail"),
    path("models/<str:name>/aliases/<str:alias>/history", api.AliasHistoryView.as_view(), name="alias-history"),
    path("models/<str:name>/aliases/<str:alias>/rollback", api.RollbackView.as_view(), name="alias-rollback"),
    path("audit-events/", api.AuditEventListView.as_view(), name="audit-event-list"),
    path("audit-events/verification", api.AuditVerificationView.as_view(), name="audit-verification"),
]
