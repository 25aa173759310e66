"""Staff API routes under /api/backups/."""

from rest_framework.routers import DefaultRouter

from . import staff

router = DefaultRouter()
router.register("cluster-backups", staff.ClusterBackupViewSet, basename="cluster-backup")
router.register("services", staff.ServiceViewSet, basename="service")
router.register("backup-runs", staff.BackupRunViewSet, basename="backup-run")
router.register("restore-runs", staff.RestoreRunViewSet, basename="restore-run")

urlpatterns = router.urls
