"""POST /api/v1/models/{name}/versions/{n}/merge: fold a LoRA version into its full-precision base (a job)."""
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from foundation.permissions import EngineerWrites
from registry import selectors
from workers.api import JobSerializer
from workers.merge_services import start_merge


class MergeView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=None, responses={202: JobSerializer})
    def post(self, request, name, number):
        job = start_merge(adapter=selectors.get_version(name, number), actor=request.user)
        return Response({"job": job.pk, **JobSerializer(job).data}, status=status.HTTP_202_ACCEPTED)
