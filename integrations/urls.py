from django.urls import path

from integrations import api

urlpatterns = [
    path("metrics", api.metrics_view, name="metrics"),
    path("api/v1/alerts/alertmanager", api.AlertmanagerView.as_view(), name="alerts-alertmanager"),
    path("api/v1/models/<str:name>/aliases/<str:alias>/health", api.HealthView.as_view(), name="alias-health"),
    path("api/v1/webhooks/", api.WebhookListView.as_view(), name="webhook-list"),
    path("api/v1/webhooks/<int:subscription_id>", api.WebhookDetailView.as_view(), name="webhook-detail"),
    path("api/v1/webhooks/<int:subscription_id>/deliveries", api.WebhookDeliveryListView.as_view(),
         name="webhook-deliveries"),
]
