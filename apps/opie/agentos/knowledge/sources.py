"""Turning a document's bytes into text: parsers per format and a guarded URL fetcher.

Every failure a person could cause (a damaged PDF, an empty or binary file, an address that
does not answer) raises `IngestionError` with a message meant for that person.
"""

from __future__ import annotations

import ipaddress
import mimetypes
import socket
from dataclasses import dataclass
from html.parser import HTMLParser
from io import BytesIO
from pathlib import PurePosixPath
from urllib.parse import urljoin, urlsplit

import httpx
from django.conf import settings

# Extension -> parser kind; AGENTOS_ALLOWED_UPLOAD_TYPES picks among these.
KINDS_BY_EXTENSION = {
    "txt": "text",
    "text": "text",
    "md": "markdown",
    "markdown": "markdown",
    "html": "html",
    "htm": "html",
    "pdf": "pdf",
}
KINDS_BY_CONTENT_TYPE = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
MAX_REDIRECTS = 5
_SNIFF_BYTES = 8192
_BLOCK_TAGS = frozenset(
    {"p", "div", "br", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6"}
    | {"section", "article", "header", "footer", "pre", "blockquote", "title", "dt", "dd", "hr"}
)
_SKIPPED_TAGS = frozenset(
    {"script", "style", "noscript", "template", "svg", "iframe", "object", "head"}
)


class IngestionError(Exception):
    """A document cannot be indexed; the message is shown to its owner as is."""


@dataclass(frozen=True)
class Fetched:
    """What a URL answered: its body, the kind of parser it needs and where it ended up."""

    data: bytes
    kind: str
    url: str
    charset: str | None


def kind_for_name(name: str) -> str | None:
    """The parser kind for a file name, from its extension; None when unsupported."""
    return KINDS_BY_EXTENSION.get(PurePosixPath(name).suffix.lower().lstrip("."))


def content_type_for(kind: str) -> str:
    """The canonical content type stored for a parser kind."""
    return {v: k for k, v in reversed(KINDS_BY_CONTENT_TYPE.items())}[kind]


def extract_text(data: bytes, kind: str, charset: str | None = None) -> str:
    """The plain text of a document of this kind, or IngestionError when there is none."""
    if not data:
        raise IngestionError("The document is empty: there is no text in it.")
    if kind == "pdf":
        text = _pdf_text(data)
    elif kind == "html":
        text = _html_text(_decode(data, charset))
    else:
        text = _decode(data, charset)
    text = text.replace("\x00", "").strip()
    if not text:
        if kind == "pdf":
            raise IngestionError(
                "This PDF has no selectable text (it may be scanned images), so there is "
                "nothing to search in it."
            )
        raise IngestionError("The document is empty: there is no text in it.")
    return text


def _decode(data: bytes, charset: str | None) -> str:
    sample = data[:_SNIFF_BYTES]
    binary = IngestionError(
        "This file is not text (it contains binary data). If it is a PDF or another format, "
        "upload it with its real extension."
    )
    if b"\x00" in sample:
        raise binary
    try:
        text = data.decode(charset or "utf-8-sig")
    except (UnicodeDecodeError, LookupError):
        text = data.decode("cp1252", errors="replace")
    head = text[:_SNIFF_BYTES]
    odd = sum(1 for ch in head if (ord(ch) < 32 and ch not in "\t\n\r\f") or ch == "\ufffd")
    # Real text has next to no control characters; 2% tolerates a few stray bytes.
    if head and odd / len(head) > 0.02:
        raise binary
    return text


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _SKIPPED_TAGS:
            self.skipping += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in _SKIPPED_TAGS and self.skipping:
            self.skipping -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        # The title sits in <head>, which is otherwise skipped, and names the page well.
        if self.in_title or not self.skipping:
            self.parts.append(data)


def _html_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    damaged = "This PDF could not be read: the file is damaged or is not really a PDF."
    try:
        reader = PdfReader(BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise IngestionError("This PDF is password-protected; upload an unprotected copy.")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except IngestionError:
        raise
    except Exception as exc:
        # pypdf raises many unrelated types (ValueError, KeyError, its own errors) on bad input.
        raise IngestionError(damaged) from exc


def fetch_url(url: str) -> Fetched:
    """Download a document over http(s), refusing private addresses unless allowed."""
    timeout = float(settings.AGENTOS_URL_FETCH_TIMEOUT)
    limit = int(settings.AGENTOS_MAX_UPLOAD_BYTES)
    current = url
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            request = _pinned_request(client, current)
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise IngestionError(
                    f"{current} did not answer within {timeout:g} seconds."
                ) from exc
            except httpx.HTTPError as exc:
                raise IngestionError(f"{current} could not be reached ({exc}).") from exc
            try:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    continue
                if response.status_code >= 400:
                    raise IngestionError(
                        f"{current} answered {response.status_code} {response.reason_phrase}."
                    )
                data = _read_capped(response, limit, current, timeout)
                kind = _kind_of_response(response, current)
                return Fetched(data, kind, current, response.charset_encoding)
            finally:
                response.close()
    raise IngestionError(f"{url} redirected more than {MAX_REDIRECTS} times.")


def _pinned_request(client: httpx.Client, url: str) -> httpx.Request:
    # The checked address is the one connected to, so DNS cannot swap in another in between.
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IngestionError("Only http:// and https:// addresses can be fetched.")
    host = parts.hostname
    address = _checked_address(host, parts.port or (443 if parts.scheme == "https" else 80))
    pinned = httpx.URL(url).copy_with(host=address)
    return client.build_request(
        "GET",
        pinned,
        headers={"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "Opie-ingest/1"},
        extensions={"sni_hostname": host},
    )


def _checked_address(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise IngestionError(f"The host {host} could not be found.") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not settings.AGENTOS_URL_FETCH_ALLOW_PRIVATE:
        for address in addresses:
            if not address.is_global or address.is_multicast:
                raise IngestionError(
                    f"{host} is a private or local network address ({address}); "
                    "fetching it is not allowed."
                )
    return str(addresses[0])


def _read_capped(response: httpx.Response, limit: int, url: str, timeout: float) -> bytes:
    too_big = IngestionError(f"{url} is larger than the {limit // 1_000_000 or 1} MB limit.")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    try:
        for piece in response.iter_bytes():
            body.extend(piece)
            if len(body) > limit:
                raise too_big
    except httpx.TimeoutException as exc:
        raise IngestionError(f"{url} stopped answering within {timeout:g} seconds.") from exc
    except httpx.HTTPError as exc:
        raise IngestionError(f"Downloading {url} failed ({exc}).") from exc
    return bytes(body)


def _kind_of_response(response: httpx.Response, url: str) -> str:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    kind = KINDS_BY_CONTENT_TYPE.get(content_type) or kind_for_name(urlsplit(url).path)
    if kind is None:
        guessed = content_type or mimetypes.guess_type(url)[0] or "an unknown type"
        raise IngestionError(
            f"{url} returned {guessed}, which cannot be indexed "
            "(supported: HTML, plain text, Markdown and PDF)."
        )
    return kind
