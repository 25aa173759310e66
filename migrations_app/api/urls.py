"""Cutover staff API routes under /api/cutover/."""

from rest_framework.routers import DefaultRouter

from ..cutover.api import staff

# The index of /api/cutover/ under its own name: "api-root" is the fleet's router's.
router = DefaultRouter()
router.root_view_name = "cutover-api-root"
router.register("summary", staff.SummaryViewSet, basename="cutover-summary")
router.register("stragglers", staff.StragglerViewSet, basename="cutover-straggler")
router.register("anomalies", staff.AnomalyViewSet, basename="cutover-anomaly")
router.register("mappings", staff.MappingViewSet, basename="cutover-mapping")

urlpatterns = router.urls
