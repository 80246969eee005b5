"""pacsd: a configurable, PACS-style DICOM server daemon."""

# The one place the version is written: hatch reads it for the package (pyproject.toml,
# [tool.hatch.version]); not importlib.metadata, whose import alone cost ~70 ms of start-up.
__version__ = "0.1.0"
