"""Files app: uploads, processing and results."""

from django.apps import AppConfig


class FilesConfig(AppConfig):
    name = "files"
