"""Routes of the canonical API (`/api/`) and of the seed system."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from notifications.api import EventViewSet

from . import seed, tus
from .views import FileViewSet

router = DefaultRouter()
router.register("files", FileViewSet, basename="file")
router.register("events", EventViewSet, basename="event")

api_urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # GET only: the view has no template for OPTIONS and would answer it with a 500.
    path(
        "docs/",
        SpectacularSwaggerView.as_view(
            url_name="schema", http_method_names=["get", "head"]
        ),
        name="docs",
    ),
    path("uploads/", tus.UploadListView.as_view(), name="upload-list"),
    path("uploads/<uuid:pk>/", tus.UploadDetailView.as_view(), name="upload-detail"),
    path("", include(router.urls)),
]

# The seed's paths, with or without a trailing slash as its clients sent them.
seed_urlpatterns = [
    re_path(r"^uploadfile/?$", seed.SeedUploadView.as_view(), name="seed-upload"),
    re_path(r"^files/?$", seed.SeedFileListView.as_view(), name="seed-file-list"),
    re_path(
        r"^files/(?P<pk>[0-9]+)/?$",
        seed.SeedFileDetailView.as_view(),
        name="seed-file-detail",
    ),
    re_path(
        r"^updatefile/(?P<pk>[0-9]+)/?$",
        seed.SeedUpdateView.as_view(),
        name="seed-file-update",
    ),
    re_path(
        r"^(?P<pk>[0-9]+)/?$",
        seed.SeedFileDetailView.as_view(),
        name="seed-file-detail-short",
    ),
]
