"""Knowledge bases, their documents (upload, status with progress, delete) and search."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from django.db.models import Count
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.opie import selectors, services
from apps.opie.agentos.knowledge import kind_for_name, search
from apps.opie.api.pagination import Pagination, paginated_response
from apps.opie.api.parsers import LimitedJSONParser, LimitedMultiPartParser
from apps.opie.api.serializers import DocumentSerializer, KnowledgeBaseSerializer
from apps.opie.api.views import current_user, validated
from apps.opie.documents import document_create, document_delete

MAX_SEARCH_RESULTS = 50


class KnowledgeBaseListView(APIView):
    """GET your knowledge bases; POST a new one."""

    pagination_class = Pagination

    @extend_schema(responses=KnowledgeBaseSerializer(many=True))
    def get(self, request: Request) -> Response:
        """Knowledge bases with their document counts, paginated."""
        kbs = (
            selectors.knowledge_bases_for(current_user(request))
            .annotate(document_count=Count("documents"))
            .order_by("name", "pk")
        )
        return paginated_response(
            request=request,
            view=self,
            items=kbs,
            shape=lambda page: KnowledgeBaseSerializer(page, many=True).data,
        )

    @extend_schema(request=KnowledgeBaseSerializer, responses={201: KnowledgeBaseSerializer})
    def post(self, request: Request) -> Response:
        """Create a knowledge base."""
        data = validated(KnowledgeBaseSerializer, request.data)
        kb = services.knowledge_base_save(user=current_user(request), data=data)
        return Response(KnowledgeBaseSerializer(kb).data, status=status.HTTP_201_CREATED)


class KnowledgeBaseDetailView(APIView):
    """GET, PATCH or DELETE one of your knowledge bases."""

    @extend_schema(responses=KnowledgeBaseSerializer)
    def get(self, request: Request, pk: int) -> Response:
        """One knowledge base."""
        kb = services.knowledge_base_get(user=current_user(request), kb_id=pk)
        return Response(KnowledgeBaseSerializer(kb).data)

    @extend_schema(request=KnowledgeBaseSerializer(partial=True), responses=KnowledgeBaseSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        """Change a knowledge base."""
        serializer = KnowledgeBaseSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        kb = services.knowledge_base_save(
            user=current_user(request), data=dict(serializer.validated_data), kb_id=pk
        )
        return Response(KnowledgeBaseSerializer(kb).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        """Delete a knowledge base and its documents."""
        services.knowledge_base_delete(user=current_user(request), kb_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentListView(APIView):
    """GET a knowledge base's documents; POST one: a multipart `file`, or JSON `text` or `url`."""

    pagination_class = Pagination
    parser_classes = [LimitedJSONParser, LimitedMultiPartParser]

    class InputSerializer(serializers.Serializer[Any]):
        title = serializers.CharField(max_length=255, required=False, allow_blank=True)
        file = serializers.FileField(required=False, help_text="txt, md, html or pdf.")
        text = serializers.CharField(required=False, trim_whitespace=False)
        url = serializers.CharField(max_length=2000, required=False)

    @extend_schema(responses=DocumentSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        """Documents with their ingestion status and progress, newest first."""
        user = current_user(request)
        kb = services.knowledge_base_get(user=user, kb_id=pk)
        return paginated_response(
            request=request,
            view=self,
            items=selectors.documents_for(user).filter(knowledge_base=kb),
            shape=lambda page: DocumentSerializer(page, many=True).data,
        )

    @extend_schema(request=InputSerializer, responses={201: DocumentSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Add a document and queue its indexing (the same content twice gives one document)."""
        data = validated(self.InputSerializer, request.data)
        upload = data.get("file")
        if upload is not None and not _upload_type_allowed(upload.name or ""):
            allowed = ", ".join("." + kind for kind in settings.AGENTOS_ALLOWED_UPLOAD_TYPES)
            raise exceptions.UnsupportedMediaType(
                upload.content_type or "", f"Unsupported file type. Allowed: {allowed}."
            )
        document = document_create(
            user=current_user(request),
            knowledge_base_id=pk,
            title=data.get("title"),
            text=data.get("text"),
            upload=upload,
            url=data.get("url"),
        )
        return Response(DocumentSerializer(document).data, status=status.HTTP_201_CREATED)


def _upload_type_allowed(name: str) -> bool:
    # Checked here as well as by document_create so that the API can answer 415, not 400.
    extension = PurePosixPath(name).suffix.lower().lstrip(".")
    allowed = {item.lower().lstrip(".") for item in settings.AGENTOS_ALLOWED_UPLOAD_TYPES}
    return kind_for_name(name) is not None and extension in allowed


class DocumentDetailView(APIView):
    """GET a document's status and progress; DELETE it with its vectors."""

    @extend_schema(responses=DocumentSerializer)
    def get(self, request: Request, pk: int) -> Response:
        """One document."""
        document = selectors.documents_for(current_user(request)).get(pk=pk)
        return Response(DocumentSerializer(document).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        """Delete a document."""
        document_delete(user=current_user(request), document_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class KnowledgeSearchView(APIView):
    """POST /api/v1/agentos/knowledge-bases/{id}/search/: the best chunks for a query."""

    class InputSerializer(serializers.Serializer[Any]):
        query = serializers.CharField(max_length=2_000)
        limit = serializers.IntegerField(min_value=1, max_value=MAX_SEARCH_RESULTS, default=5)

    class ReferenceSerializer(serializers.Serializer[Any]):
        document_id = serializers.IntegerField()
        title = serializers.CharField(allow_blank=True)
        knowledge_base_id = serializers.IntegerField()
        chunk = serializers.CharField(allow_blank=True)
        score = serializers.FloatField()
        chunk_index = serializers.IntegerField()
        url = serializers.CharField(allow_blank=True)

    @extend_schema(request=InputSerializer, responses=ReferenceSerializer(many=True))
    def post(self, request: Request, pk: int) -> Response:
        """Search one of your knowledge bases; only its own chunks can match."""
        data = validated(self.InputSerializer, request.data)
        kb = services.knowledge_base_get(user=current_user(request), kb_id=pk)
        references = search([kb.pk], data["query"], limit=data["limit"])
        return Response(self.ReferenceSerializer([r.as_dict() for r in references], many=True).data)
