"""Model families vidcache supports and the names users type."""

from .base import FamilySpec, ModelName
from .registry import FAMILIES, NAMES, ResolvedModel, resolve

__all__ = ["FAMILIES", "NAMES", "FamilySpec", "ModelName", "ResolvedModel", "resolve"]
