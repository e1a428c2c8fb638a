"""DwellFi settings: one module, configured from the environment only (12-factor).

With DJANGO_DEBUG=0, DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS set, this is the
production configuration; unset, it is the local one `make run` and `make test` use.
"""

from datetime import timedelta
from pathlib import Path

import environ
from corsheaders.defaults import default_headers as default_cors_headers
from django.core.exceptions import ImproperlyConfigured
from django_guid.integrations import CeleryIntegration

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=True)

# No default secret in production: a missing key there is an ImproperlyConfigured error.
SECRET_KEY = (
    env.str("DJANGO_SECRET_KEY", default="dwellfi-insecure-local-development-key")
    if DEBUG
    else env.str("DJANGO_SECRET_KEY")
)
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Browser clients on other origins (a web build of the seed app) may call the API
# with a token; cookies are never sent cross-origin (no CORS_ALLOW_CREDENTIALS).
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/(api|files)/"
# A tus client on another origin sends and reads the protocol's headers.
TUS_HEADERS = [
    "tus-resumable",
    "upload-length",
    "upload-metadata",
    "upload-offset",
    "upload-checksum",
    "x-http-method-override",
]
CORS_ALLOW_HEADERS = [*default_cors_headers, *TUS_HEADERS]
CORS_EXPOSE_HEADERS = [
    "location",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "upload-expires",
    "dwellfi-file-id",
    *TUS_HEADERS,
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "django_guid",
    "channels",
    "axes",
    "files",
    "notifications",
]

MIDDLEWARE = [
    # First: every line a request causes, its tasks' included, carries its id.
    "django_guid.middleware.guid_middleware",
    "django.middleware.security.SecurityMiddleware",
    # Before anything else that answers on its own (a 413, say): preflights are
    # answered here, and every answer to an allowed origin carries its headers.
    "corsheaders.middleware.CorsMiddleware",
    # Before anything reads the query, the cookies (the session) or the headers.
    "dwellfi.middleware.nul_character_middleware",
    # Before anything reads the body: sizes it by what was received (413, chunked).
    "files.uploads.RequestBodyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # request.htmx: whether a request is htmx's (the pages' fragments, `files.views`).
    "django_htmx.middleware.HtmxMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: answers a locked-out sign-in with its 429.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dwellfi.urls"
ASGI_APPLICATION = "dwellfi.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: PostgreSQL through psycopg 3 in production; SQLite under var/ by default.
DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'dwellfi.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat write concurrently: WAL and IMMEDIATE transactions
    # turn "database is locked" errors into short waits.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Under ASGI every request runs in a thread of its own, and a persistent
    # connection per thread is one per concurrent request: 50 uploads at once used
    # up PostgreSQL's 100 connections. A pool (psycopg_pool) bounds them per
    # process; requests wait for a free connection instead of failing.
    DATABASE_POOL_SIZE = env.int("DATABASE_POOL_SIZE", default=10)
    if DATABASE_POOL_SIZE:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them instead
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": DATABASE_POOL_SIZE,
            "timeout": 30,
        }
    else:
        DATABASES["default"]["CONN_MAX_AGE"] = env.int(
            "DATABASE_CONN_MAX_AGE", default=60
        )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: one URL for the Celery broker, the channel layer and the upload throttle.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

# Seconds to wait for Redis to accept a connection / answer. Short, so that with
# Redis unreachable an upload still returns at once (the row stays queued and the
# recovery job enqueues it later) instead of hanging on the OS's TCP timeouts.
REDIS_CONNECT_TIMEOUT = 1
REDIS_SOCKET_TIMEOUT = 2

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": url,
                    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
                    "socket_timeout": REDIS_SOCKET_TIMEOUT,
                }
                for url in env.list("CHANNEL_REDIS_URLS", default=[REDIS_URL])
            ]
        },
    }
}

CACHES = {
    "default": {
        # Fails open: the upload throttle must not turn a Redis outage into 500s.
        "BACKEND": "dwellfi.cache.FailOpenRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "dwellfi",
        "OPTIONS": {
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
            "socket_timeout": REDIS_SOCKET_TIMEOUT,
        },
    }
}

# Celery: crash safety first (NOTES.md): late acks, reject on worker loss,
# prefetch 1, hard limit below the broker's visibility timeout.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("DWELLFI_TASK_SOFT_TIME_LIMIT", default=25 * 60)
CELERY_TASK_TIME_LIMIT = env.int("DWELLFI_TASK_TIME_LIMIT", default=30 * 60)
DWELLFI_VISIBILITY_TIMEOUT = env.int(
    "DWELLFI_VISIBILITY_TIMEOUT", default=CELERY_TASK_TIME_LIMIT + 10 * 60
)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": DWELLFI_VISIBILITY_TIMEOUT,
    # A message whose worker died (kill -9, lost machine) goes back to the queue
    # once it is older than the visibility timeout; kombu only looks every
    # interval x throttle seconds (100 s by default): scan every sweep instead.
    "unacked_restore_interval": min(10, max(1, DWELLFI_VISIBILITY_TIMEOUT // 10)),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
}
if not (
    CELERY_TASK_SOFT_TIME_LIMIT < CELERY_TASK_TIME_LIMIT < DWELLFI_VISIBILITY_TIMEOUT
):
    # Otherwise a long task is handed to a second worker while the first still runs.
    raise ImproperlyConfigured(
        "DWELLFI_TASK_SOFT_TIME_LIMIT < DWELLFI_TASK_TIME_LIMIT < "
        "DWELLFI_VISIBILITY_TIMEOUT must hold"
    )
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Files of at least this many bytes are processed from a queue of their own, served
# by a worker of its own (`worker-large` in the Procfile and docker-compose.yml): a
# 200 MB file keeps a worker process busy for about 10 s, and small files queued
# behind two of them would wait that long. 0 sends every file to the default queue,
# for a deployment that runs one kind of worker only.
DWELLFI_LARGE_FILE_BYTES = env.int("DWELLFI_LARGE_FILE_BYTES", default=10 * 1024 * 1024)
DWELLFI_LARGE_FILE_QUEUE = "large"
CELERY_TASK_DEFAULT_QUEUE = "celery"
# No STARTED row in the results table: writing it runs before the task body, so with
# the database down the task would die there (acked, never retried). The file row
# says when processing started.
CELERY_TASK_TRACK_STARTED = False
# Tasks whose results are not kept (a file's: its row is the outcome) still record
# their failures and retries in the results table, for the admin.
CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED = True
# Celery's Django fixup closes the connection pool of a prefork child at every task
# boundary (celery#10554): every task then built a pool and its connection again,
# 5-6 ms of a small file's 30 ms. With DB_REUSE_MAX it does so only every that many
# tasks; between tasks the connection goes back to the pool (dwellfi/celery.py), and
# the pool's health check replaces one PostgreSQL dropped.
CELERY_DB_REUSE_MAX = 1000
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "files.recover_stuck": {
        "task": "files.tasks.recover_stuck_files",
        "schedule": timedelta(seconds=env.int("DWELLFI_SWEEP_SECONDS", default=60)),
    },
    "files.sweep_leftovers": {
        "task": "files.tasks.sweep_leftovers",
        "schedule": timedelta(hours=6),
    },
}

# DwellFi's own settings.
DWELLFI_MAX_UPLOAD_BYTES = env.int(
    "DWELLFI_MAX_UPLOAD_BYTES", default=200 * 1024 * 1024
)
# Resumable (tus) uploads at /api/uploads/ (docs/uploads.md): every request body is
# one chunk of at most DWELLFI_UPLOAD_CHUNK_BYTES, so daphne, which holds a body
# whole in memory, never holds more than that; the whole upload is up to
# DWELLFI_MAX_RESUMABLE_BYTES. One unfinished after DWELLFI_UPLOAD_EXPIRY_SECONDS
# without a chunk is deleted with its bytes.
DWELLFI_UPLOAD_CHUNK_BYTES = env.int("DWELLFI_UPLOAD_CHUNK_BYTES", default=8 * 1024**2)
DWELLFI_MAX_RESUMABLE_BYTES = env.int(
    "DWELLFI_MAX_RESUMABLE_BYTES", default=2 * 1024**3
)
DWELLFI_UPLOAD_EXPIRY_SECONDS = env.int(
    "DWELLFI_UPLOAD_EXPIRY_SECONDS", default=24 * 3600
)
# A gzip file is decompressed while the worker reads it, never past this many
# bytes (docs/processing.md): 4x the largest upload. Metrics exports compress about
# 7x (docs/performance.md), and at the ~20 MB/s a large file is processed at, a run
# of this size ends within the task's soft time limit. A gzip bomb fails at the
# limit, memory flat.
DWELLFI_MAX_DECOMPRESSED_BYTES = env.int(
    "DWELLFI_MAX_DECOMPRESSED_BYTES", default=4 * DWELLFI_MAX_RESUMABLE_BYTES
)
CELERY_BEAT_SCHEDULE["files.expire_uploads"] = {
    "task": "files.tasks.expire_uploads",
    "schedule": timedelta(minutes=10),
}
DWELLFI_MAX_ATTEMPTS = env.int("DWELLFI_MAX_ATTEMPTS", default=3)
# Seconds a web process keeps an API token it looked up (`dwellfi.auth`): a token
# deleted elsewhere is refused by every process within this time; 0 looks it up
# on every request.
DWELLFI_TOKEN_CACHE_SECONDS = env.float("DWELLFI_TOKEN_CACHE_SECONDS", default=5)
# A queued file older than this is enqueued again (the broker may have been down).
DWELLFI_QUEUED_GRACE_SECONDS = env.int("DWELLFI_QUEUED_GRACE_SECONDS", default=5 * 60)
DWELLFI_PROGRESS_INTERVAL = env.float("DWELLFI_PROGRESS_INTERVAL", default=0.25)
# Behind nginx: the internal location that serves the media root, to which
# downloads are handed with X-Accel-Redirect (deploy/nginx). Unset, daphne streams
# them itself.
DWELLFI_X_ACCEL_PREFIX = env.str("DWELLFI_X_ACCEL_PREFIX", default="")

# What one user may hold (docs/api.md, "Limits"; 0: no limit): sockets at once, across
# every web process (a new one closes the oldest); stored bytes and files; files
# queued or processing at once. Durable events are kept this many days.
DWELLFI_MAX_SOCKETS_PER_USER = env.int("DWELLFI_MAX_SOCKETS_PER_USER", default=10)
DWELLFI_QUOTA_BYTES = env.int("DWELLFI_QUOTA_BYTES", default=10 * 1024**3)
DWELLFI_QUOTA_FILES = env.int("DWELLFI_QUOTA_FILES", default=100_000)
DWELLFI_QUOTA_PROCESSING = env.int("DWELLFI_QUOTA_PROCESSING", default=1000)
DWELLFI_EVENT_RETENTION_DAYS = env.int("DWELLFI_EVENT_RETENTION_DAYS", default=30)
CELERY_BEAT_SCHEDULE["notifications.prune_events"] = {
    "task": "notifications.tasks.prune_events",
    "schedule": timedelta(hours=1),
}

# Storage: the local disk (DWELLFI_MEDIA_ROOT) or S3 through django-storages when
# machines do not share a disk.
MEDIA_ROOT = env.path("DWELLFI_MEDIA_ROOT", default=VAR_DIR / "media")
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = env.path("DWELLFI_STATIC_ROOT", default=BASE_DIR / "staticfiles")
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # uPlot, htmx and tus-js-client, installed from the npm registry by `npm ci`
    # (package-lock.json).
    ("vendor/uplot", BASE_DIR / "node_modules/uplot/dist"),
    ("vendor/htmx", BASE_DIR / "node_modules/htmx.org/dist"),
    ("vendor/tus", BASE_DIR / "node_modules/tus-js-client/dist"),
]
_default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
if env.str("DWELLFI_S3_BUCKET", default=""):
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("DWELLFI_S3_BUCKET"),
            "endpoint_url": env.str("DWELLFI_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("DWELLFI_S3_REGION", default=None),
            "default_acl": None,
            "file_overwrite": False,
            # Downloads redirect to pre-signed URLs: Signature Version 4, the one
            # every region accepts.
            "signature_version": "s3v4",
            # An object read (by the worker, or to hash a resumable upload) is
            # spooled to a temporary file past 1 MiB, not held whole in memory.
            "max_memory_size": 1024 * 1024,
        },
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
# Uploads larger than this are spooled to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_HANDLERS = ["files.uploads.LimitedTemporaryFileUploadHandler"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so an anonymous request is answered 401 with WWW-Authenticate.
        "dwellfi.auth.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "files.api.pagination.Pagination",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "files.api.parsers.SafeJSONParser",
        "files.api.parsers.StrictFormParser",
        "files.api.parsers.StrictMultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "dwellfi.schema.ApiSchema",
    "EXCEPTION_HANDLER": "files.api.errors.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"uploads": env.str("DWELLFI_UPLOAD_RATE", "600/min")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "DwellFi API",
    "DESCRIPTION": "Upload JSON files, follow their processing, read the results.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
# Sign-in attempts (django-axes): after DWELLFI_LOGIN_FAILURE_LIMIT wrong passwords
# in a row for one username from one address, that pair is refused (429) for
# DWELLFI_LOGIN_COOLOFF_MINUTES. The pair, not the address alone, so colleagues
# behind one NAT are not locked out by one another, and not the username alone, so
# a stranger cannot lock a user out. Attempts are rows in the database (shared by
# every web process, in the admin); successful sign-ins are not logged (unbounded).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("DWELLFI_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(
    minutes=env.int("DWELLFI_LOGIN_COOLOFF_MINUTES", default=15)
)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True
AXES_LOCKOUT_CALLABLE = "files.api.errors.locked_out"
AXES_VERBOSE = False  # no banner on every manage.py command

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Production hardening; TLS is terminated by a proxy in front of daphne.
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# One JSON object a line (python-json-logger), stamped with the request id
# (django-guid: the X-Request-ID header, or a new one, passed on to the tasks it
# sends) and the task and file ids (dwellfi/log.py); the web and the worker (Celery
# is told to keep this configuration) log the same way.
DJANGO_GUID = {
    "GUID_HEADER_NAME": "X-Request-ID",
    "INTEGRATIONS": [CeleryIntegration(use_django_logging=True)],
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request": {
            "()": "django_guid.log_filters.CorrelationId",
            "correlation_id_field": "request_id",
        },
        "task": {"()": "dwellfi.log.TaskContext"},
        "refusals": {"()": "dwellfi.log.RefusalFilter"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {
                "levelname": "level",
                "name": "logger",
                "exc_info": "exception",
            },
            "timestamp": "time",
            "json_ensure_ascii": False,
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request", "task", "refusals"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own console handler (DEBUG only) would print its lines twice.
        "django": {"handlers": [], "level": "INFO"},
        "django.channels.server": {"level": "WARNING"},
        # A line per request about where its id came from: noise.
        "django_guid": {"level": "WARNING"},
    },
}
