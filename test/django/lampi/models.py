"""The LAMPI site's lamp, as the course's `lampi` app defines it."""
import json
from uuid import uuid4

import paho.mqtt.publish
from django.conf import settings
from django.contrib.auth.models import User
from django.db import models

DEFAULT_USER = "parked_device_user"


def generate_association_code():
    return uuid4().hex


class Lampi(models.Model):
    name = models.CharField(max_length=50, default="My LAMPI")
    device_id = models.CharField(max_length=12, primary_key=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    association_code = models.CharField(max_length=32, unique=True, default=generate_association_code)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return "{}: {}".format(self.device_id, self.name)

    def associate_and_publish_associated_msg(self, user):
        # The site's claim: the new owner, saved, then the lamp told (retained).
        self.user = user
        self.save()
        paho.mqtt.publish.single(
            settings.LAMPI_ASSOCIATION_TOPIC.format(device_id=self.device_id),
            json.dumps({"associated": True}),
            qos=1,
            retain=True,
            hostname=settings.LAMPI_MQTT_HOST,
            port=settings.LAMPI_MQTT_PORT,
        )
