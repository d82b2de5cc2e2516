"""Knowledge base pages: list and create, documents with their progress, upload, delete."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.opie import services
from apps.opie.agentos.service import NotFound
from apps.opie.documents import document_create, document_delete
from apps.opie.forms import DocumentForm, KnowledgeBaseForm
from apps.opie.models import KnowledgeDocument
from apps.opie.web import reads
from apps.opie.web.common import AuthedRequest, is_htmx, not_found, upload_accept

# The chat page's upload panel shows this many of the newest documents.
PANEL_DOCUMENTS = 5


@login_required
@require_http_methods(["GET", "POST"])
def knowledge_list(request: AuthedRequest) -> HttpResponse:
    """The user's knowledge bases, and a form to create one."""
    form = KnowledgeBaseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            kb = services.knowledge_base_save(user=request.user, data=form.service_data())
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            messages.success(request, f"Knowledge base “{kb.name}” created.")
            return redirect("opie:knowledge-base", kb_id=kb.pk)
    context = {"knowledge_bases": reads.knowledge_bases_with_counts(request.user), "form": form}
    return render(request, "opie/knowledge_list.html", context, status=400 if form.errors else 200)


@login_required
@require_GET
def knowledge_detail(request: AuthedRequest, kb_id: int) -> HttpResponse:
    """A knowledge base's documents with their status, and the upload form."""
    kb = reads.knowledge_base(request.user, kb_id)
    context = {
        "kb": kb,
        "documents": reads.documents_of(request.user, kb.pk),
        "document_form": DocumentForm(),
        "accept": upload_accept(),
        "allowed": upload_accept().replace(",", ", "),
    }
    return render(request, "opie/knowledge_detail.html", context)


@login_required
@require_POST
def knowledge_delete(request: AuthedRequest, kb_id: int) -> HttpResponse:
    """Delete a knowledge base with its documents and vectors."""
    kb = reads.knowledge_base(request.user, kb_id)
    services.knowledge_base_delete(user=request.user, kb_id=kb.pk)
    messages.success(request, f"Knowledge base “{kb.name}” deleted.")
    return redirect("opie:knowledge")


@login_required
@require_POST
def document_upload(request: AuthedRequest, kb_id: int) -> HttpResponse:
    """Add a document and queue its indexing; htmx gets the refreshed document list."""
    kb = reads.knowledge_base(request.user, kb_id)
    document, error = _add_document(request, kb.pk)
    if not is_htmx(request):
        if error:
            messages.error(request, f"The document was not added: {error}")
        elif document is not None:
            messages.success(request, f"“{document.title}” added; indexing has started.")
        return redirect("opie:knowledge-base", kb_id=kb.pk)
    if error:
        response = render(request, "opie/partials/_upload_error.html", {"error": error}, status=422)
        # The error belongs beside the form, not in place of the document list.
        response["HX-Retarget"] = f"#upload-errors-{kb.pk}"
        response["HX-Reswap"] = "innerHTML"
        return response
    limit = PANEL_DOCUMENTS if request.POST.get("panel") else None
    context = {"documents": reads.documents_of(request.user, kb.pk, limit=limit), "kb": kb}
    return render(request, "opie/partials/_document_list.html", context)


def _add_document(
    request: AuthedRequest, kb_id: int
) -> tuple[KnowledgeDocument | None, str | None]:
    form = DocumentForm(request.POST, request.FILES)
    if not form.is_valid():
        return None, " ".join(str(message) for errors in form.errors.values() for message in errors)
    try:
        return document_create(user=request.user, knowledge_base_id=kb_id, **form.source()), None
    except ValidationError as exc:
        return None, " ".join(exc.messages)


@login_required
@require_GET
def document_status(request: AuthedRequest, document_id: int) -> HttpResponse:
    """One document's row: status and progress; it keeps polling until ready or failed."""
    document = reads.document(request.user, document_id)
    return render(request, "opie/partials/_document.html", {"document": document})


@login_required
@require_POST
def document_remove(request: AuthedRequest, document_id: int) -> HttpResponse:
    """Delete a document with its vectors and file."""
    try:
        kb_id = reads.document(request.user, document_id).knowledge_base_id
        document_delete(user=request.user, document_id=document_id)
    except (NotFound, KnowledgeDocument.DoesNotExist):
        return not_found(request, f"Document {document_id} not found.")
    if is_htmx(request):
        return HttpResponse("")
    messages.success(request, "Document deleted.")
    return redirect("opie:knowledge-base", kb_id=kb_id)
