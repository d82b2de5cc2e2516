from django.apps import AppConfig


class OpieConfig(AppConfig):
    name = "apps.opie"
    label = "opie"
    verbose_name = "Opie agents"
    default_auto_field = "django.db.models.BigAutoField"
