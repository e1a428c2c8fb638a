"""`manage.py upload`: files uploaded from the command line, with their outcome."""

import io
import re

import pytest
from django.core.management import CommandError, call_command

from files import dispatch, services
from files.models import File

from .factories import broken_bytes, server_4_bytes


@pytest.fixture
def sample(tmp_path):
    """Write a file under tmp_path and return its path."""

    def write(name: str, content: bytes):
        path = tmp_path / name
        path.write_bytes(content)
        return path

    return write


@pytest.mark.django_db
def test_sync_processes_in_process_and_prints_the_counts(
    user, rules, sample, sent, capsys
):
    path = sample("server_4.json", server_4_bytes())
    call_command("upload", str(path), "--user", user.username, "--sync")
    file = File.objects.get(owner=user)
    assert file.status == File.Status.PROCESSED and file.name == "server_4.json"
    out = capsys.readouterr().out
    assert f"{path}: file {file.pk} processed: 9 records, 27 anomalies" in out


@pytest.mark.django_db
def test_a_failed_file_prints_its_position_and_exits_non_zero(
    user, rules, sample, sent, capsys
):
    good = sample("server_4.json", server_4_bytes())
    broken = sample("broken.json", broken_bytes())
    with pytest.raises(CommandError, match="1 of 2 files"):
        call_command("upload", good, broken, "--user", user.username, "--sync")
    captured = capsys.readouterr()
    assert "server_4.json: file" in captured.out
    assert "broken.json: file" in captured.err
    assert "failed:" in captured.err and "line 13, column 20" in captured.err
    assert File.objects.filter(owner=user).count() == 2


@pytest.mark.django_db
def test_unreadable_and_refused_files_are_reported_and_the_rest_uploaded(
    user, rules, sample, sent, capsys, tmp_path
):
    good = sample("ok.json", b"[1, 2]")
    empty = sample("empty.json", b"")
    text = sample("notes.txt", b"hello")
    missing = tmp_path / "missing.json"
    with pytest.raises(CommandError, match="3 of 4 files"):
        call_command(
            "upload", good, empty, text, missing, "--user", user.username, "--sync"
        )
    err = capsys.readouterr().err
    assert f"{missing}: cannot read: No such file or directory" in err
    assert f"{empty}: refused: file: The submitted file is empty." in err
    assert f"{text}: refused: file: The submitted file is not JSON." in err
    assert list(File.objects.values_list("name", "kind")) == [("ok.json", "json")]


@pytest.mark.django_db
def test_a_file_over_the_upload_limit_is_refused(user, sample, sent, settings, capsys):
    settings.DWELLFI_MAX_UPLOAD_BYTES = 10
    path = sample("big.json", b"[" + b"1," * 10 + b"1]")
    with pytest.raises(CommandError):
        call_command("upload", path, "--user", user.username, "--sync")
    assert "refused: larger than 10 bytes" in capsys.readouterr().err
    assert not File.objects.exists()


@pytest.mark.django_db
def test_an_unknown_user_is_an_error(sample):
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("upload", sample("a.json", b"[]"), "--user", "nobody")


@pytest.mark.django_db
def test_no_wait_queues_for_the_workers_after_commit(
    user, sample, sent, capsys, django_capture_on_commit_callbacks
):
    path = sample("server_4.json", server_4_bytes())
    with django_capture_on_commit_callbacks(execute=True):
        call_command("upload", path, "--user", user.username, "--no-wait")
    file = File.objects.get(owner=user)
    assert file.status == File.Status.QUEUED and sent == [file.pk]
    assert f"file {file.pk} queued (task {file.task_id})" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_wait_polls_until_a_worker_is_done(user, rules, sample, monkeypatch, capsys):
    # A stand-in worker: processes each file as soon as its task is sent.
    monkeypatch.setattr(
        dispatch,
        "enqueue",
        lambda *, file_id, task_id, size: bool(
            services.file_process(file_id=file_id, task_id=task_id)
        ),
    )
    path = sample("server_4.json", server_4_bytes())
    call_command("upload", path, "--user", user.username)
    assert "processed: 9 records, 27 anomalies" in capsys.readouterr().out


@pytest.mark.django_db
def test_wait_gives_up_after_the_timeout_without_a_worker(user, sample, sent, capsys):
    path = sample("server_4.json", server_4_bytes())
    with pytest.raises(CommandError):
        call_command("upload", path, "--user", user.username, "--timeout", "0.3")
    assert "still queued: no outcome in time" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ((), "--user is required (or --url to upload over HTTP)."),
        (("--url", "http://127.0.0.1:9"), "--url needs an API token"),
        (("--url", "http://127.0.0.1:9", "--token", "k", "--sync"), "--url uploads"),
        (("--url", "http://127.0.0.1:9", "--token", "k"), "cannot reach"),
    ],
)
def test_uploads_over_http_need_a_token_and_a_server(
    arguments, error, sample, monkeypatch
):
    monkeypatch.delenv("DWELLFI_TOKEN", raising=False)
    with pytest.raises(CommandError, match=re.escape(error)):
        call_command("upload", sample("a.json", b"[]"), *arguments)


def test_generate_metrics_is_deterministic_and_processable(tmp_path, user, rules):
    from files import engine
    from files.management.commands.generate_metrics import parse_size

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for out in (first, second):
        call_command(
            "generate_metrics",
            str(out),
            "--size",
            "200KB",
            "--servers",
            "2",
            "--anomalies",
            "0.1",
            "--invalid",
            "0.05",
            stdout=io.StringIO(),
        )
    assert first.read_bytes() == second.read_bytes()
    assert abs(first.stat().st_size - parse_size("200KB")) < 5000

    class Counting:
        records = issues = anomalies = 0

        def add_records(self, batch):
            self.records += len(batch)

        def add_anomalies(self, batch):
            self.anomalies += len(batch)

        def add_issues(self, batch):
            self.issues += len(batch)

        def reset(self):
            self.records = self.issues = self.anomalies = 0

    sink = Counting()
    outcome = engine.process(
        lambda: first.open("rb"),
        size=first.stat().st_size,
        rules=engine.DEFAULT_RULES,
        sink=sink,
    )
    total = outcome.record_count + outcome.invalid_record_count
    assert outcome.kind == "server_metrics" and len(outcome.summary["servers"]) == 2
    assert 0.02 < outcome.invalid_record_count / total < 0.09
    assert 0.06 < outcome.anomaly_count / total < 0.15
