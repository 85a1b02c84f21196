from django.db import models


class NaiveEntry(models.Model):
    key = models.CharField(max_length=256, unique=True)
    value = models.JSONField()

    def __str__(self) -> str:
        return self.key
