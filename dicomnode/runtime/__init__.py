"""Service wiring, lifecycle and signals (no module-level mutable state)."""

from dicomnode.runtime.service import Component, Service
from dicomnode.runtime.wiring import build_service

__all__ = ["Component", "Service", "build_service"]
