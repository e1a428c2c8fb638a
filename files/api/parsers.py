"""Request parsers that cannot be pushed into a server error or store broken text."""

from django.http import QueryDict
from django.utils.datastructures import MultiValueDict
from rest_framework.exceptions import ParseError
from rest_framework.parsers import DataAndFiles, FormParser, JSONParser, MultiPartParser

# Django decodes form fields with errors="replace": bytes that are not UTF-8 arrive
# as U+FFFD, so its presence is how undecodable text shows (a field that really
# holds U+FFFD is refused too; the two cannot be told apart after decoding).
REPLACEMENT = "\ufffd"
NUL = "\x00"


class SafeJSONParser(JSONParser):
    """DRF's JSON parser; deep nesting is a 400, not a RecursionError 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc


def check_form_text(fields: QueryDict, files: MultiValueDict | None = None) -> None:
    """ParseError unless every field is text PostgreSQL can store and UTF-8 decoded.

    A NUL character (PostgreSQL text cannot hold one) or bytes that were not UTF-8
    in a field's name or value, or a NUL in a file part's declared type, refuse the
    whole request with a 400 before any view stores anything. File names are only
    shown, and cleaned for that where they are stored.
    """
    for name, values in fields.lists():
        for text in (name, *values):
            if NUL in text:
                raise ParseError(f"Field {name[:100]!r} holds a NUL character.")
            if REPLACEMENT in text:
                raise ParseError(f"Field {name[:100]!r} is not valid UTF-8 text.")
    for name, upload in (files or MultiValueDict()).items():
        if NUL in (upload.content_type or "") + (upload.charset or ""):
            raise ParseError(f"File {name[:100]!r}: its Content-Type holds a NUL.")


class StrictMultiPartParser(MultiPartParser):
    """DRF's multipart parser, refusing fields `check_form_text` refuses."""

    def parse(self, stream, media_type=None, parser_context=None) -> DataAndFiles:
        parsed = super().parse(stream, media_type, parser_context)
        check_form_text(parsed.data, parsed.files)
        return parsed


class StrictFormParser(FormParser):
    """DRF's urlencoded form parser, refusing fields `check_form_text` refuses."""

    def parse(self, stream, media_type=None, parser_context=None) -> QueryDict:
        parsed = super().parse(stream, media_type, parser_context)
        check_form_text(parsed)
        return parsed
