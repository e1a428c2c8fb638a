"""`manage.py upload FILE... --user NAME`: upload files as a user and print the outcome.

Each file goes through `services.file_create`, the service behind the API's upload,
so it is checked, stored and queued the same way. By default the command then waits
for the workers to process every file (`--no-wait` returns once they are queued);
`--sync` processes them in this process instead, which needs no worker. The exit
status is non-zero when any file could not be read, was refused, failed or was not
done in time.

With `--url` (and an API token) the files go to a running server over HTTP instead,
as resumable uploads (`files.client`, tus through tuspy): chunked at the server's
chunk size, going on from the server's offset after a dropped connection, and,
run again after an interruption, from where the last run stopped.
"""

import mimetypes
import os
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import UploadedFile
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_guid import clear_guid, set_guid
from django_guid.utils import generate_guid

from files import client, services
from files.models import File

POLL_SECONDS = 0.2


class Command(BaseCommand):
    help = "Upload JSON files as a user, through the same service as the API."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="FILE", type=Path)
        parser.add_argument("--user", help="The username that will own the files.")
        parser.add_argument(
            "--wait",
            action="store_true",
            default=True,
            help="Wait until each file is processed or failed (the default).",
        )
        parser.add_argument(
            "--no-wait",
            action="store_false",
            dest="wait",
            help="Return once the files are queued for the workers.",
        )
        parser.add_argument(
            "--sync",
            action="store_true",
            help="Process each file in this process instead of by a worker.",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=600.0,
            help="Seconds to wait for the workers (default 600).",
        )
        remote = parser.add_argument_group(
            "over HTTP", "Upload to a running server, resumably (tus), instead."
        )
        remote.add_argument(
            "--url", help="The server, e.g. http://127.0.0.1:8000 (then no --user)."
        )
        remote.add_argument(
            "--token",
            default=os.environ.get("DWELLFI_TOKEN"),
            help="The API token (default: $DWELLFI_TOKEN).",
        )
        remote.add_argument(
            "--chunk-size",
            type=int,
            help="Bytes per request (default: the largest the server takes).",
        )
        remote.add_argument(
            "--retries",
            type=int,
            default=5,
            help="Tries in a row after a failed chunk, each from the server's "
            "offset (default 5).",
        )
        remote.add_argument(
            "--retry-delay",
            type=float,
            default=1.0,
            help="Seconds before the first retry, doubling each time (default 1).",
        )
        remote.add_argument(
            "--resume-file",
            type=Path,
            default=client.default_resume_file(),
            help="Where unfinished uploads are remembered between runs "
            "(default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # One request id for the run: the logs of every file it uploads carry it.
        set_guid(generate_guid())
        try:
            self._handle(**options)
        finally:
            clear_guid()

    def _handle(self, **options: Any) -> None:
        if options["url"]:
            self._handle_remote(**options)
            return
        if not options["user"]:
            raise CommandError("--user is required (or --url to upload over HTTP).")
        owner = self._owner(options["user"])
        waiting = options["wait"] and not options["sync"]
        problems = 0
        uploaded: list[tuple[Path, File]] = []
        for path in options["paths"]:
            file = self._upload(path, owner=owner, sync=options["sync"])
            if file is None:
                problems += 1
            elif waiting:
                uploaded.append((path, file))
            else:
                problems += not self._report(path, file, waited=options["sync"])
        deadline = time.monotonic() + options["timeout"]
        for path, file in uploaded:
            problems += not self._report(path, self._wait(file, deadline), waited=True)
        if problems:
            total = len(options["paths"])
            raise CommandError(f"{problems} of {total} files did not succeed.")

    def _handle_remote(self, **options: Any) -> None:
        if options["user"] or options["sync"]:
            raise CommandError("--url uploads as the token's user, to its workers.")
        if not options["token"]:
            raise CommandError("--url needs an API token: --token or DWELLFI_TOKEN.")
        server = client.Server(options["url"], options["token"])
        try:
            chunk_size = options["chunk_size"] or server.chunk_size()
        except client.UploadFailed as exc:
            raise CommandError(str(exc)) from exc
        storage = client.resume_storage(options["resume_file"])
        problems = 0
        uploaded: list[tuple[Path, int]] = []
        try:
            for path in options["paths"]:
                file_id = self._send(path, server, storage, chunk_size, options)
                if file_id is None:
                    problems += 1
                    continue
                uploaded.append((path, file_id))
        finally:
            storage.close()
        deadline = time.monotonic() + options["timeout"]
        for path, file_id in uploaded:
            file = self._remote_file(server, file_id)
            while options["wait"] and not file.is_final:
                if time.monotonic() >= deadline:
                    break
                time.sleep(POLL_SECONDS)
                file = self._remote_file(server, file_id)
            problems += not self._report(path, file, waited=options["wait"])
        if problems:
            total = len(options["paths"])
            raise CommandError(f"{problems} of {total} files did not succeed.")

    def _send(
        self, path: Path, server, storage, chunk_size: int, options
    ) -> int | None:
        """Upload one file over HTTP: its id, or None when it went nowhere."""
        try:
            fingerprinter = client.path_fingerprint(server, path)
        except OSError as exc:
            self._say(path, f"cannot read: {exc.strerror or exc}", ok=False)
            return None
        shown = -1

        def progress(offset: int, length: int) -> None:
            nonlocal shown
            tenth = offset * 10 // length
            if tenth > shown:
                shown = tenth
                self._say(path, f"sent {offset} of {length} bytes", ok=True)

        def resume(offset: int, why: str) -> None:
            self._say(path, f"resuming at byte {offset} after {why}", ok=True)

        try:
            return client.upload(
                server,
                path,
                name=path.name,
                chunk_size=chunk_size,
                retries=options["retries"],
                retry_delay=options["retry_delay"],
                storage=storage,
                fingerprinter=fingerprinter,
                on_progress=progress,
                on_resume=resume,
            )
        except client.UploadFailed as exc:
            if exc.offset is None:
                self._say(path, f"not uploaded: {exc}", ok=False)
            else:
                self._say(
                    path,
                    f"interrupted at byte {exc.offset}: {exc}; "
                    "run the command again to resume",
                    ok=False,
                )
            return None

    def _remote_file(self, server, file_id: int) -> File:
        """The file as the server has it, as an unsaved File (for `_report`)."""
        try:
            data = server.get_json(server.api_url(f"/api/files/{file_id}/"))
        except client.UploadFailed as exc:
            raise CommandError(f"file {file_id}: {exc}") from exc
        fields = {f.name for f in File._meta.concrete_fields} - {"owner", "updated_by"}
        return File(**{name: value for name, value in data.items() if name in fields})

    def _owner(self, username: str):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        return user

    def _upload(self, path: Path, *, owner, sync: bool) -> File | None:
        """Store one file (and process it when `sync`); None when it went nowhere."""
        try:
            handle = path.open("rb")
            size = path.stat().st_size
        except OSError as exc:
            self._say(path, f"cannot read: {exc.strerror or exc}", ok=False)
            return None
        limit = settings.DWELLFI_MAX_UPLOAD_BYTES
        with handle:
            if size > limit:
                self._say(path, f"refused: larger than {limit} bytes", ok=False)
                return None
            upload = UploadedFile(
                handle,
                name=path.name,
                content_type=mimetypes.guess_type(path.name)[0] or "application/json",
                size=size,
            )
            try:
                if not sync:
                    return services.file_create(owner=owner, upload=upload)
                # One transaction: the task the upload enqueues is sent only after
                # commit, when the file is final, so a worker finds nothing to do.
                with transaction.atomic():
                    file = services.file_create(owner=owner, upload=upload)
                    services.file_process(file_id=file.pk, task_id=file.task_id)
            except services.UploadRefused as exc:
                self._say(path, f"refused: file: {exc}", ok=False)
                return None
            except services.QuotaExceeded as exc:
                self._say(path, f"refused: {exc}", ok=False)
                return None
        file.refresh_from_db()
        return file

    def _wait(self, file: File, deadline: float) -> File:
        """The file once it is final, or as it is when the deadline passes."""
        while not file.is_final and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            file.refresh_from_db()
        return file

    def _report(self, path: Path, file: File, *, waited: bool) -> bool:
        """Print one file's outcome; whether it is a success."""
        where = f"file {file.pk}"
        if file.status == File.Status.PROCESSED:
            found = f"kind {file.kind}"
            if file.kind == File.Kind.SERVER_METRICS:
                found = (
                    f"{file.record_count} records, {file.anomaly_count} anomalies, "
                    f"{file.invalid_record_count} invalid records"
                )
            self._say(path, f"{where} processed: {found}", ok=True)
            return True
        if file.status == File.Status.FAILED:
            self._say(path, f"{where} failed: {file.error_text}", ok=False)
            return False
        if not waited:
            self._say(path, f"{where} queued (task {file.task_id})", ok=True)
            return True
        self._say(
            path,
            f"{where} still {file.status}: no outcome in time (is a worker running? "
            "--sync processes without one)",
            ok=False,
        )
        return False

    def _say(self, path: Path, text: str, *, ok: bool) -> None:
        if ok:
            self.stdout.write(f"{path}: {text}", self.style.SUCCESS)
        else:
            self.stderr.write(f"{path}: {text}", self.style.ERROR)
