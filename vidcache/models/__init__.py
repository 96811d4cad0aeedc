"""Model families vidcache supports: one adapter per family, and the names users type."""

from .adapter import FamilyAdapter, TeaCacheIndicator
from .registry import ADAPTERS, NAMES, ResolvedModel, adapter_named, adapter_of, resolve
from .spec import ModelName

__all__ = ["ADAPTERS", "NAMES", "FamilyAdapter", "ModelName", "ResolvedModel", "TeaCacheIndicator",
           "adapter_named", "adapter_of", "resolve"]
