from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response


@api_view(["GET"])
def whoami(request: Request) -> Response:
    """The account the presented credentials belong to."""
    user = request.user
    return Response({"id": user.pk, "email": getattr(user, "email", "")})
