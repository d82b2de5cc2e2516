from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from apps.accounts.urls import api_urlpatterns as account_api

urlpatterns = [
    path("", RedirectView.as_view(url="/agentos/", permanent=False)),
    path("admin/", admin.site.urls),
    path("account/", include("apps.accounts.urls")),
    path("agentos/", include("apps.opie.urls")),
    path("api/v1/auth/", include(account_api)),
    path("api/v1/agentos/", include("apps.opie.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
]

handler500 = "apps.opie.web.errors.server_error"
