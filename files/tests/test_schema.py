"""The OpenAPI schema against the running code: schemathesis calls every operation.

The schema is fetched from `/api/schema/` and every operation is called in-process
through Django's WSGI handler, inside the test's transaction, with generated valid
and invalid input, authenticated with the token of a user who owns a processed file.
Each response must be no server error and must match the schema: a documented status
code, content type, headers and body.
"""

import json

import pytest
import schemathesis
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from files import services
from files.models import File

from .factories import server_4_bytes, upload

django_app = get_wsgi_application()


def app(environ, start_response):
    """Django's WSGI handler, with each response read and closed at once.

    Closing ends the request as a server would: Django closes the upload's
    temporary file and sends `request_finished`.
    """
    response = django_app(environ, start_response)
    try:
        return [b"".join(response)]
    finally:
        response.close()


def json_value() -> st.SearchStrategy:
    """Any JSON value, small."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text()
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
        ),
        max_leaves=10,
    )


# The file parts are JSON texts (`encoding` in the schema), metrics exports among
# them. The API takes no JSON request body, so nothing else is sent this way.
schemathesis.openapi.media_type(
    "application/json",
    st.one_of(
        st.just(server_4_bytes()),
        json_value().map(lambda value: json.dumps(value).encode()),
    ),
)

schema = schemathesis.openapi.from_wsgi(
    "/api/schema/?format=json",
    app,
    config=schemathesis.Config.from_dict(
        {
            # The same examples on every run: a failure here is reproducible.
            "seed": 20261129,
            "generation": {"mode": "all"},
            "phases": {
                "coverage": {"enabled": False},
                "stateful": {"enabled": False},
            },
            # The server validates more than a schema can say (no NUL in text, a
            # file part must hold a JSON text), and schemathesis sends object
            # parts form-encoded: such schema-valid input gets a documented 400.
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    ),
)


@pytest.fixture
def in_transaction() -> None:
    """Keep the test's connection across requests, as Django's test client does.

    The WSGI handler closes connections at each request's start and end; inside
    the test's transaction that would roll it back.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def owned_file(user, rules, sent) -> File:
    file = services.file_create(owner=user, upload=upload(server_4_bytes()))
    services.file_process(file_id=file.pk, task_id=file.task_id)
    file.refresh_from_db()
    return file


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_as_its_schema_says(case, owned_file, user, in_transaction):
    if "id" in (case.path_parameters or {}) and case.meta.generation.mode.is_positive:
        case.path_parameters["id"] = owned_file.pk
    token = Token.objects.get_or_create(user=user)[0]
    case.call_and_validate(headers={"Authorization": f"Token {token.key}"})


def test_the_schema_is_valid_without_warnings(tmp_path):
    call_command(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--file",
        str(tmp_path / "schema.yaml"),
    )
