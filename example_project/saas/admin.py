from __future__ import annotations

from django.contrib import admin

from example_project.saas.models import Profile


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("user", "plan")
    list_filter = ("plan",)
    search_fields = ("user__username",)
