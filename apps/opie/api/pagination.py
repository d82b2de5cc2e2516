"""Page-number pagination for every list of the API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import QuerySet
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView


class Pagination(PageNumberPagination):
    """`?page=` and `?page_size=` (capped by API_MAX_PAGE_SIZE)."""

    page_size = settings.API_PAGE_SIZE
    page_size_query_param = "page_size"
    max_page_size = settings.API_MAX_PAGE_SIZE


def paginated_response(
    *,
    request: Request,
    view: APIView,
    items: QuerySet[Any] | Sequence[Any],
    shape: Callable[[list[Any]], Any],
) -> Response:
    """One page of `items`, each page shaped by `shape`, in the paginated envelope."""
    paginator = Pagination()
    page = paginator.paginate_queryset(items, request, view=view) or []
    return paginator.get_paginated_response(shape(list(page)))
