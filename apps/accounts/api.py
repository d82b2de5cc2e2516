from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response


@extend_schema(
    responses=inline_serializer(
        "WhoAmI", {"id": serializers.IntegerField(), "email": serializers.EmailField()}
    )
)
@api_view(["GET"])
def whoami(request: Request) -> Response:
    """The account the presented credentials belong to."""
    user = request.user
    return Response({"id": user.pk, "email": getattr(user, "email", "")})
