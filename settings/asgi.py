import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
# Static files are few and small; serving them from the app keeps `make run` to one process.
application = ASGIStaticFilesHandler(get_asgi_application())
