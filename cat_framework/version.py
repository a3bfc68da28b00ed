"""The release of cat-framework.

Its own module so that the package's modules can read it without importing the package's public
API, whose ``__init__`` imports some of them (that would be an import cycle).
"""

__version__ = "0.1.0"
