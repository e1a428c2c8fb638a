"""Top-level routes: pages, the API, the seed's routes, the admin."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from dwellfi import health
from files import views as pages
from files.api import errors
from files.api.urls import api_urlpatterns, seed_urlpatterns

urlpatterns = [
    path("", pages.home, name="home"),
    path("f/<int:pk>/", pages.file_page, name="file-page"),
    path("f/<int:pk>/row/", pages.file_row, name="file-row"),
    path("healthz", health.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("api/", include(api_urlpatterns)),
    path("api-auth/", include("rest_framework.urls")),
    path("files/", include(seed_urlpatterns)),
    # After the API's routes: any other path under their prefixes is a JSON 404.
    re_path(
        r"^(?:api|files)(?:/|$)",
        errors.unknown_api_path,
        name=errors.UNKNOWN_API_PATH,
    ),
    path("admin/", admin.site.urls),
]

handler400 = "files.api.errors.bad_request"
handler404 = "files.api.errors.not_found"
handler500 = "files.api.errors.server_error"
