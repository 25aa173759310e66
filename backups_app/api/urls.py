"""Staff API routes under /api/backups/: each capability's viewsets on one router."""

from rest_framework.routers import DefaultRouter

from ..cluster_backups.api import staff as cluster_staff
from ..service_backups.api import staff as service_staff

router = DefaultRouter()
router.register("cluster-backups", cluster_staff.ClusterBackupViewSet, basename="cluster-backup")
router.register("services", service_staff.ServiceViewSet, basename="service")
router.register("backup-runs", service_staff.BackupRunViewSet, basename="backup-run")
router.register("restore-runs", service_staff.RestoreRunViewSet, basename="restore-run")

urlpatterns = router.urls
