from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)
    # Set by the worker, which takes the item's id from a Redis queue.
    processed = models.BooleanField(default=False)
