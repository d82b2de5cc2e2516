from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from apps.accounts.urls import api_urlpatterns as account_api

urlpatterns = [
    path("", RedirectView.as_view(url="/agentos/", permanent=False)),
    path("admin/", admin.site.urls),
    path("account/", include("apps.accounts.urls")),
    path("api/v1/auth/", include(account_api)),
]
