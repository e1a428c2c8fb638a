# DwellFi's production image: daphne (web), Celery worker and beat all run from it;
# docker-compose.yml chooses the command. Static files are collected at build time.
# The browser libraries (uPlot, htmx, tus-js-client) come from the npm registry, pinned by package-lock.json
# (its dev dependency, the JSON parsing test suite, only for the tests).
FROM node:20-slim AS node-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 dwellfi \
    && mkdir -p /data/media /data/static \
    && chown dwellfi:dwellfi /data/media /data/static

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
COPY --from=node-deps /app/node_modules ./node_modules
# Static files go to /data/static, the volume docker-compose shares with nginx
# (it starts as a copy of these). The key only lets the settings load for
# collectstatic; it is never used at run time.
ENV DWELLFI_STATIC_ROOT=/data/static
RUN DJANGO_DEBUG=0 DJANGO_SECRET_KEY=collectstatic-only-build-key \
    DJANGO_ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput \
    && chown -R dwellfi:dwellfi /data/static

USER dwellfi
# Production unless told otherwise, for every process of the image (web, worker,
# beat, manage.py): a secret key and allowed hosts are then required.
ENV DJANGO_DEBUG=0 \
    DWELLFI_MEDIA_ROOT=/data/media
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers", "dwellfi.asgi:application"]
