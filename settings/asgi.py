import gc
import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from apps.opie.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
# Static files are few and small; serving them from the app keeps `make run` to one process.
application = ASGIStaticFilesHandler(get_asgi_application())
# Django and the apps are loaded: their objects live as long as the process, so full garbage
# collections need not scan them (agno, loaded later, is frozen when first used).
gc.freeze()
