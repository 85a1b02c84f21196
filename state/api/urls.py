from rest_framework.routers import SimpleRouter

from .views import StateViewSet

router = SimpleRouter(trailing_slash=False)
router.register("", StateViewSet, basename="state")

urlpatterns = router.urls
