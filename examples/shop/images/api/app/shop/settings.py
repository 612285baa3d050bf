"""Settings as production has them: no DEBUG, the host checked, HTTPS behind a proxy, Secure
cookies, CORS and CSRF for the front end's origin. Everything site-specific comes from the
environment (api.env)."""

import os

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = os.environ["ALLOWED_HOSTS"].split(",")
FRONT_ORIGIN = os.environ["FRONT_ORIGIN"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "corsheaders",
    "store",
]
MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["DATABASE_HOST"],
        "NAME": "shop",
        "USER": "shop",
        "PASSWORD": "shop",
        "CONN_MAX_AGE": 0,
    }
}
REDIS_HOST = os.environ["REDIS_HOST"]

# itproxy terminates TLS and says so.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_SAMESITE = "None"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_SAMESITE = "None"
# Django 3.2 takes host names here (4.0 wants the scheme too).
CSRF_TRUSTED_ORIGINS = [FRONT_ORIGIN.split("://", 1)[1]]
CORS_ALLOWED_ORIGINS = [FRONT_ORIGIN]
CORS_ALLOW_CREDENTIALS = True

USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"level": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "level"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
