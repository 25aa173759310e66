"""Staff API routes under /api/."""

from rest_framework.routers import DefaultRouter

from . import staff

router = DefaultRouter()
router.register("systems", staff.SystemViewSet, basename="system")
router.register("inventories", staff.InventoryViewSet, basename="inventory")
router.register("changes", staff.InventoryChangeViewSet, basename="change")
router.register("fleet-summary", staff.FleetSummaryViewSet, basename="fleet-summary")

urlpatterns = router.urls
