"""The OpenAPI description of every route, with the errors each one can answer.

The project's `DEFAULT_SCHEMA_CLASS`: every app's API is described the same way.
"""

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiRequest
from rest_framework import serializers

ERROR_DESCRIPTIONS = {
    "400": "Bad input (field errors are listed under `errors`), or a malformed "
    "request: over 1,000 fields or 100 files, a NUL character, text that is not "
    "UTF-8.",
    "401": "No or bad credentials.",
    "403": "Refused: a session-authenticated request without a valid CSRF token.",
    "404": "No such file for the caller (another user's file does not exist for "
    "them), or no such page.",
    "413": "The upload is larger than `DWELLFI_MAX_UPLOAD_BYTES`, or its other "
    "fields than 2.5 MB, or it would take the caller's stored bytes past "
    "`DWELLFI_QUOTA_BYTES`; nothing is stored.",
    "415": "The request body is not `multipart/form-data`.",
    "429": "Too many uploads: try again after `Retry-After` seconds. Or the caller "
    "has as many files as allowed (`DWELLFI_QUOTA_FILES`), or as many queued or "
    "processing at once (`DWELLFI_QUOTA_PROCESSING`); nothing is stored.",
}
PAGINATION_PARAMETERS = {"page", "page_size"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class ErrorSerializer(serializers.Serializer):
    """Every error: `detail`, and for bad input the field errors under `errors`."""

    detail = serializers.CharField()
    errors = serializers.DictField(
        required=False,
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Field name (`non_field_errors` for none) to its messages; 400 only.",
    )


def multipart(serializer: type, *json_parts: str) -> dict[str, OpenApiRequest]:
    """A `multipart/form-data` body whose named parts hold JSON texts."""
    encoding = {name: {"contentType": "application/json"} for name in json_parts}
    return {"multipart/form-data": OpenApiRequest(serializer, encoding=encoding)}


class ApiSchema(AutoSchema):
    """drf-spectacular's inspector, adding the `{"detail": ...}` errors of each route.

    Which errors a route answers follows from what it does: every route needs
    credentials (401), unsafe methods check CSRF for sessions (403), an object in
    the path or a page can be missing (404), a body or a query parameter can be
    invalid (400, 415), an upload can be too large (413) and a throttled route can
    say 429.
    """

    def get_tags(self) -> list[str]:
        if self.path.startswith("/files/"):
            return ["seed routes"]
        return [self.path.split("/")[2]]

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        error = self.resolve_serializer(ErrorSerializer, "response").ref
        responses = operation["responses"]
        for code in self._error_codes(operation):
            response = {
                "description": ERROR_DESCRIPTIONS[code],
                "content": {"application/json": {"schema": error}},
            }
            if code == "429":
                response["headers"] = {
                    "Retry-After": {
                        "schema": {"type": "integer"},
                        "description": "Seconds to wait before the next upload.",
                    }
                }
            responses.setdefault(code, response)
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _error_codes(self, operation: dict[str, Any]) -> list[str]:
        body = operation.get("requestBody", {}).get("content", {})
        parameters = operation.get("parameters", [])
        path_parameters = [p for p in parameters if p["in"] == "path"]
        query = {p["name"] for p in parameters if p["in"] == "query"}
        codes = ["401"]
        if body or query:
            codes.append("400")
        if self.method in UNSAFE_METHODS:
            codes.append("403")
        if path_parameters or query & PAGINATION_PARAMETERS:
            codes.append("404")
        if body:
            codes.append("415")
        if "multipart/form-data" in body:
            codes.append("413")
        if self.view.get_throttles():
            codes.append("429")
        return codes
