from django.contrib.auth import views as auth_views
from django.urls import path

from apps.accounts import api, views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke_view, name="token-revoke"),
]

api_urlpatterns = [path("whoami/", api.whoami, name="api-whoami")]
