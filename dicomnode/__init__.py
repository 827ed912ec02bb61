"""dicomnode — a DICOM network node between scanners and the PACS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dicomnode")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
