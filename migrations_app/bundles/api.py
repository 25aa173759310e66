"""The staff API of streamed exports, under /api/bundles/streams/: what another instance
pulls a bundle through.

POST starts an export of a selection made to be streamed (202, the run's URL); the puller
sends the sha256 of the blobs it already holds, which the export leaves out. Once the run
has succeeded, ``manifest/`` gives the signed manifest (every member and every chunk with
its sha256) and ``chunk/?index=N`` gives one chunk, produced on demand, from the byte a
``Range: bytes=K-`` header names. A tenant admin's token reaches its own subtree only: an
organization or an export outside it is one that does not exist (404).
"""

import json
import re
from pathlib import Path

from django.http import StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from fleet_app import access
from fleet_app import selectors as fleet_selectors
from fleet_app.api.pagination import NewestFirst

from . import selectors, services
from .kinds import BY_NAME
from .models import BundleExport
from .stream_source import (
    DEFAULT_CHUNK_BYTES,
    FORMAT,
    StreamGone,
    chunk_pieces,
    chunk_size_of,
    stream_manifest,
)

SHA256 = r"^[0-9a-f]{64}$"
RANGE = re.compile(r"^bytes=(\d+)-$")


class NotReady(APIException):
    status_code = status.HTTP_409_CONFLICT


class StreamCreateSerializer(serializers.Serializer):
    organizations = serializers.ListField(
        child=serializers.SlugField(max_length=255),
        required=False,
        max_length=1000,
        help_text="Slugs of the organizations whose subtrees go (neither these nor a "
        "selection: all the caller reaches).",
    )
    selection = serializers.SlugField(
        required=False, max_length=64, help_text="A saved selection's name."
    )
    kinds = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(BY_NAME)), required=False, max_length=50
    )
    since_export = serializers.IntegerField(
        required=False, min_value=1, help_text="Incremental since this export (its id here)."
    )
    since_date = serializers.DateField(
        required=False, help_text="Incremental since the last export made on or before it."
    )
    inventories = serializers.ChoiceField(choices=["latest", "full"], default="latest")
    credentials = serializers.BooleanField(default=False)
    chunk_size = serializers.IntegerField(
        required=False, min_value=1024, max_value=4 * 1024**3, help_text="Bytes per chunk."
    )
    have = serializers.ListField(
        child=serializers.RegexField(SHA256),
        required=False,
        max_length=1_000_000,
        help_text="sha256 of the blobs the puller already holds: they are not sent.",
    )


class StreamSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    chunks = serializers.SerializerMethodField()

    class Meta:
        model = BundleExport
        fields = [
            "id", "url", "state", "phase", "error", "sequence", "bundle_id", "manifest_sha256",
            "chunk_size", "chunks", "bytes", "created_at", "finished_at",
        ]  # fmt: skip

    def get_url(self, obj) -> str:
        request = self.context.get("request")
        path = reverse("bundle-stream-detail", args=[obj.pk])
        return request.build_absolute_uri(path) if request else path

    def get_chunks(self, obj) -> int | None:
        """How many chunks the manifest lists, once the export has succeeded."""
        if obj.state != "succeeded":
            return None
        try:
            return len(_manifest_of(obj)[1]["chunks"])
        except StreamGone:
            return None


def _manifest_of(run: BundleExport):
    data, signature = stream_manifest(Path(run.output))
    return data, json.loads(data), signature


MANIFEST_RESPONSE = inline_serializer(
    name="BundleStreamManifest",
    fields={
        "manifest": serializers.CharField(help_text="The manifest's exact text (signed)."),
        "signature": serializers.DictField(
            child=serializers.CharField(), help_text="signer (key id) and signature (hex)."
        ),
    },
)


class BundleStreamViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Streamed exports the caller started (or, for the platform, anyone's)."""

    serializer_class = StreamSerializer
    pagination_class = NewestFirst
    # JSON only: a pull's list of held blobs is long, and a form would hit Django's cap on
    # the number of fields (an HTML 400) long before the list's own limit.
    parser_classes = [JSONParser]

    def get_queryset(self):
        return selectors.stream_exports_visible_to(self.request.user)

    @extend_schema(
        request=StreamCreateSerializer,
        responses={
            202: StreamSerializer,
            404: OpenApiResponse(description="No organization, selection or base export by "
                                 "that name is visible to the caller."),
            409: OpenApiResponse(description="The request is at odds with what is recorded "
                                 "(e.g. a base export of another selection)."),
        },
    )  # fmt: skip
    def create(self, request, *args, **kwargs):
        form = StreamCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        user = request.user
        organizations = list(data.get("organizations") or [])
        if organizations:
            visible = set(
                fleet_selectors.organizations_visible_to(user)
                .filter(slug__in=organizations)
                .values_list("slug", flat=True)
            )
            missing = sorted(set(organizations) - visible)
            if missing:
                raise NotFound(f"No organization you reach has the slug {missing[0]!r}.")
        elif not data.get("selection"):
            # Neither named: everything the caller reaches (a standby's whole copy).
            organizations = list(
                fleet_selectors.organizations_visible_to(user)
                .filter(parent__isnull=True)
                .values_list("slug", flat=True)
                if access.is_platform(user)
                else [user.organization.slug]
            )
            if not organizations:
                raise NotFound("There is no organization to export.")
        if data.get("selection") and not access.is_platform(user):
            # Saved selections are the platform's (the table): a tenant names its orgs.
            raise NotFound(f"No saved selection you reach is called {data['selection']!r}.")
        if data.get("since_export") and not (
            selectors.stream_exports_visible_to(user, any_format=True)
            .filter(pk=data["since_export"], state="succeeded")
            .exists()
        ):
            raise NotFound(f"No finished export you reach has the id {data['since_export']}.")
        if data["credentials"] and not access.allowed(
            user, "action", "migrations_app.bundleexport.credentials", "r"
        ):
            raise PermissionDenied(f"{user.email} may not export credential digests.")
        since = data.get("since_export") or data.get("since_date")
        try:
            run = services.bundle_export_create(
                actor=user,
                organizations=organizations or None,
                selection=data.get("selection"),
                kinds=list(data.get("kinds") or []),
                since=str(since) if since else None,
                fmt=FORMAT,
                chunk_size=data.get("chunk_size") or DEFAULT_CHUNK_BYTES,
                credentials=data["credentials"],
                inventories=data["inventories"],
                have=list(data.get("have") or []),
                enqueue=True,
            )
        except services.BundleRefused as refusal:
            text = str(refusal)
            # What is left after the checks above: a name that matches nothing recorded
            # ("No saved selection…", "No export of this selection…"), or a base export
            # of another selection.
            if text.startswith("No "):
                raise NotFound(text) from None
            return Response({"detail": text}, status=status.HTTP_409_CONFLICT)
        body = StreamSerializer(run, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})

    @extend_schema(
        responses={
            (200, "application/json"): OpenApiResponse(
                MANIFEST_RESPONSE,
                description="``manifest``: the manifest's exact text (what the signature "
                "covers); ``signature``: signer and Ed25519 signature.",
            ),
            409: OpenApiResponse(description="The export has not succeeded (yet)."),
            410: OpenApiResponse(description="The export's files are gone (retention)."),
        }
    )
    @action(detail=True, methods=["get"])
    def manifest(self, request, pk=None):
        run = self._finished(self.get_object())
        try:
            data, _manifest, signature = _manifest_of(run)
        except StreamGone as gone:
            return Response({"detail": str(gone)}, status=status.HTTP_410_GONE)
        return Response({"manifest": data.decode(), "signature": signature})

    @extend_schema(
        parameters=[
            OpenApiParameter("index", OpenApiTypes.INT, required=True, description="0, 1, …")
        ],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (206, "application/octet-stream"): OpenApiTypes.BINARY,
            409: OpenApiResponse(description="The export has not succeeded (yet)."),
            410: OpenApiResponse(description="The export's files are gone (retention)."),
            416: OpenApiResponse(description="The Range starts past the chunk's end."),
        },
    )
    @action(detail=True, methods=["get"])
    def chunk(self, request, pk=None):
        run = self._finished(self.get_object())
        raw = request.query_params.get("index", "")
        if not raw.isdigit() or len(raw) > 9:
            raise ValidationError({"index": ["Give the chunk's index: 0, 1, …"]})
        index = int(raw)
        folder = Path(run.output)
        try:
            size = chunk_size_of(folder, index)
        except StreamGone as gone:
            return Response({"detail": str(gone)}, status=status.HTTP_410_GONE)
        except IndexError as error:
            raise NotFound(str(error)) from None
        start = 0
        wanted = request.headers.get("Range", "")
        if wanted:
            match = RANGE.match(wanted.strip())
            if match is None:
                raise ValidationError({"Range": ["Only bytes=START- is served."]})
            start = int(match.group(1))
            if start >= size:
                response = Response(
                    {"detail": f"The chunk has {size} bytes."},
                    status=status.HTTP_416_REQUESTED_RANGE_NOT_SATISFIABLE,
                )
                response["Content-Range"] = f"bytes */{size}"
                return response
        response = StreamingHttpResponse(
            chunk_pieces(folder, index, start),
            status=206 if wanted else 200,
            content_type="application/octet-stream",
        )
        response["Content-Length"] = str(size - start)
        response["Accept-Ranges"] = "bytes"
        if wanted:
            response["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        return response

    def _finished(self, run: BundleExport) -> BundleExport:
        if run.state != "succeeded":
            raise NotReady(f"Export {run.pk} is {run.state}, not finished: ask again later.")
        return run
