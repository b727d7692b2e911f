"""The staff dashboard: ``path("weckr/", include("weckr_django.dashboard.urls"))``."""
