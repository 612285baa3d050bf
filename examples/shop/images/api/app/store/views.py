import json
import uuid

import redis
from django.conf import settings
from django.contrib.auth import authenticate, login
from django.db import connection
from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .models import Item

# Which container answered: a restart shows as a new instance.
INSTANCE = uuid.uuid4().hex[:12]
cache = redis.Redis(host=settings.REDIS_HOST, port=6379, socket_timeout=5)


@require_GET
def health(request):
    with connection.cursor() as cursor:
        cursor.execute("select 1")
    cache.ping()
    return JsonResponse({"db": "ok", "cache": "ok", "instance": INSTANCE, "secure": request.is_secure()})


@require_GET
def csrf(request):
    return JsonResponse({"csrf": get_token(request)})


@require_POST
def login_view(request):
    body = json.loads(request.body or b"{}")
    user = authenticate(request, username=body.get("username"), password=body.get("password"))
    if user is None:
        return JsonResponse({"error": "bad credentials"}, status=403)
    login(request, user)
    return JsonResponse({"user": user.username})


@require_GET
def me(request):
    if not request.user.is_authenticated:
        return JsonResponse({"user": None}, status=401)
    visits = cache.incr(f"visits:{request.user.username}")
    return JsonResponse({"user": request.user.username, "visits": visits})


@require_http_methods(["GET", "POST"])
def items(request):
    if request.method == "POST":
        if not request.user.is_authenticated:
            return JsonResponse({"error": "sign in first"}, status=401)
        name = json.loads(request.body or b"{}").get("name", "")
        item = Item.objects.create(name=name)
        cache.rpush("jobs", item.id)
        return JsonResponse({"id": item.id, "name": item.name}, status=201)
    listed = [{"id": i.id, "name": i.name, "processed": i.processed} for i in Item.objects.order_by("id")]
    return JsonResponse({"items": listed, "instance": INSTANCE})


@require_GET
def item(request, item_id):
    try:
        i = Item.objects.get(id=item_id)
    except Item.DoesNotExist:
        return JsonResponse({"error": "no such item"}, status=404)
    return JsonResponse({"id": i.id, "name": i.name, "processed": i.processed})
