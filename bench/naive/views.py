"""The two baselines: Django's ceiling (a constant JsonResponse) and a naive DRF store."""

from django.http import JsonResponse
from rest_framework import generics, serializers
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

from .models import NaiveEntry


def plain(request):
    """Answer a constant: what Django itself costs per request."""
    return JsonResponse({"success": True, "data": {"key": "plain", "value": 1}})


class DrfConstantView(APIView):
    """Answer a constant through DRF: what DRF itself costs per request (its ceiling)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        return Response({"success": True, "data": {"key": "plain", "value": 1}})


class NaiveEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = NaiveEntry
        fields = ["key", "value"]


class NaiveEntryView(generics.RetrieveUpdateAPIView):
    """GET/PUT one entry, exactly as DRF's defaults would have it.

    The project's REST_FRAMEWORK settings change authentication, permissions, renderers,
    parsers and the exception handler; put DRF's own defaults back so this is the baseline
    a Django user gets out of the box.
    """

    queryset = NaiveEntry.objects.all()
    serializer_class = NaiveEntrySerializer
    lookup_field = "key"
    authentication_classes = [SessionAuthentication, BasicAuthentication]
    permission_classes = [AllowAny]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def get_exception_handler(self):
        return exception_handler
