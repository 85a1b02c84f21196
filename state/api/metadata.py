"""OPTIONS answers in the envelope too, like every response under /api/."""

from typing import Any

from rest_framework.metadata import SimpleMetadata


class EnvelopedMetadata(SimpleMetadata):
    def determine_metadata(self, request, view) -> dict[str, Any]:
        return {"success": True, "data": super().determine_metadata(request, view)}
