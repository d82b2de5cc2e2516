from django.urls import path

from apps.opie.agentos import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
