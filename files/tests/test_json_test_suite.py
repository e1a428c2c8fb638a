"""The public JSON parsing test suite (nst/JSONTestSuite, test_parsing/, MIT), each
file uploaded and run through the processing task as a worker runs it.

`y_` files must be processed, `n_` files refused at upload or failed with a
position, `i_` files (implementation-defined) either, but never crash. The suite's
files are public test data kept beside the samples, in shared/JSONTestSuite/
(test_parsing/ and its LICENSE); DWELLFI_JSON_TEST_SUITE names another folder.
"""

import os
from pathlib import Path

import pytest
from rest_framework.exceptions import ValidationError

from files import services, tasks
from files.models import File

from .factories import SAMPLES, upload

SUITE = Path(
    os.environ.get("DWELLFI_JSON_TEST_SUITE")
    or SAMPLES.parent / "JSONTestSuite" / "test_parsing"
)
CASES = sorted(SUITE.glob("[yni]_*.json")) if SUITE.is_dir() else []

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not CASES, reason=f"no JSONTestSuite files in {SUITE}"),
]


def outcome(owner, content: bytes) -> tuple[str, dict | None]:
    """ "refused" at upload, or the file's status and error after the task ran."""
    try:
        file = services.file_create(owner=owner, upload=upload(content))
    except ValidationError:
        return "refused", None
    tasks.process_file.apply(args=[file.pk], task_id=file.task_id).get()
    file = File.objects.get(pk=file.pk)
    return file.status, file.error


@pytest.fixture
def owner(user, rules, monkeypatch):
    monkeypatch.setattr(services, "enqueue", lambda *, file_id, task_id, size: True)
    return user


@pytest.mark.parametrize("path", CASES, ids=[case.name for case in CASES])
def test_every_suite_file_gets_the_outcome_the_rfc_gives_it(owner, path):
    status, error = outcome(owner, path.read_bytes())
    if path.name.startswith("y_"):
        assert (status, error) == ("processed", None)
    elif path.name.startswith("n_"):
        assert status in ("refused", "failed")
        if status == "failed":
            # A syntax error, located: never a crash.
            assert error["offset"] is not None and error["line"] >= 1, error
    else:
        assert status in ("refused", "processed", "failed")
        if status == "failed":
            assert not error["message"].startswith("Internal error"), error
