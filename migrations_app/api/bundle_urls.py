"""Bundle staff API routes under /api/bundles/: streamed exports another instance pulls."""

from rest_framework.routers import SimpleRouter

from ..bundles import api

router = SimpleRouter()
router.register("streams", api.BundleStreamViewSet, basename="bundle-stream")

urlpatterns = router.urls
