"""`manage.py ensure_demo_user`: the demo account that `make run` offers (DEBUG only).

Creates the user `demo` with a random password and an API token, prints them, and
keeps them in var/demo-credentials.txt (mode 0600), from which `make run` shows them
on every start. An existing user is left as it is; if its password no longer matches
the stored one, the stale file is removed rather than shown.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token

from dwellfi.demo import (
    DEMO_CREDENTIALS_FILE,
    read_demo_credentials,
    write_demo_credentials,
)

USERNAME = "demo"


class Command(BaseCommand):
    help = "Create the demo user and its API token if missing (DEBUG mode only)."

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "ensure_demo_user runs only with DJANGO_DEBUG on: an account with a "
                "password on disk has no place in production. Use createsuperuser."
            )
        verbose = options["verbosity"] >= 1
        user = get_user_model().objects.filter(username=USERNAME).first()
        if user is not None:
            stored = read_demo_credentials()
            if stored and not user.check_password(stored.get("password", "")):
                DEMO_CREDENTIALS_FILE.unlink(missing_ok=True)
            if verbose:
                self.stdout.write(f"User {USERNAME!r} already exists; nothing changed.")
            return

        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            user = get_user_model().objects.create_user(USERNAME, password=password)
            token = Token.objects.create(user=user)
        write_demo_credentials(
            {"username": USERNAME, "password": password, "token": token.key}
        )
        if verbose:
            self.stdout.write(
                self.style.SUCCESS(f"Created user {USERNAME!r}.")
                + f"\nusername: {USERNAME}\npassword: {password}\ntoken: {token.key}"
                + f"\n(kept in {DEMO_CREDENTIALS_FILE})"
            )
