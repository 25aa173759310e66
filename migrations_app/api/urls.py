"""Cutover staff API routes under /api/cutover/."""

from rest_framework.routers import SimpleRouter

from ..cutover.api import staff

# SimpleRouter: no API root view, whose "api-root" name the fleet's router already uses.
router = SimpleRouter()
router.register("summary", staff.SummaryViewSet, basename="cutover-summary")
router.register("stragglers", staff.StragglerViewSet, basename="cutover-straggler")
router.register("anomalies", staff.AnomalyViewSet, basename="cutover-anomaly")
router.register("mappings", staff.MappingViewSet, basename="cutover-mapping")

urlpatterns = router.urls
