from django.urls import path

from store import views

urlpatterns = [
    path("api/health", views.health),
    path("api/csrf", views.csrf),
    path("api/login", views.login_view),
    path("api/me", views.me),
    path("api/items", views.items),
    path("api/items/<int:item_id>", views.item),
]
