"""The background worker: takes item ids from the Redis list `jobs` and marks them processed."""

import logging

import redis
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection

from store.models import Item

log = logging.getLogger("store.worker")


class Command(BaseCommand):
    help = "Process the jobs queue"

    def handle(self, *args, **options):
        queue = redis.Redis(host=settings.REDIS_HOST, port=6379)
        log.info("worker waiting for jobs")
        while True:
            job = queue.blpop("jobs", timeout=5)
            if job is None:
                continue
            item_id = int(job[1])
            try:
                Item.objects.filter(id=item_id).update(processed=True)
            finally:
                # No connection held between jobs: the database may restart meanwhile.
                connection.close()
            log.info("processed item %s", item_id)
