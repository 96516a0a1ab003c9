from django.contrib import admin

from .models import Lampi

admin.site.register(Lampi)
