#!/usr/bin/env python3
"""The test LAMPI site's manage.py (run it with Debian's /usr/bin/python3, which has Django 3.2)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lampisite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
