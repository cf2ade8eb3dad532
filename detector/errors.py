"""The exceptions copyscan raises. Every one derives from :class:`CopyscanError`."""

from __future__ import annotations


class CopyscanError(Exception):
    """Base class for every error copyscan raises on purpose."""


class ImageError(CopyscanError):
    """One input image could not be used; the run goes on with the next one."""


class UnreadablePath(ImageError):
    """The path does not exist, is not a regular file, or cannot be read."""


class UnsupportedFormat(ImageError):
    """The bytes are not an image in an allowed format (JPEG, PNG, GIF, WebP, BMP, TIFF)."""


class DecompressionBomb(ImageError):
    """The image declares more pixels or bytes than the configured limits allow."""


class CorruptImage(ImageError):
    """The image header was accepted but the pixel data could not be decoded."""


class UnhashableImage(ImageError):
    """The image is too small or too flat to give a meaningful perceptual code."""


class SettingError(CopyscanError, ValueError):
    """A setting's value is of the wrong kind or outside its allowed range."""


class MissingInput(CopyscanError):
    """A path the caller named (not a file found inside one) does not exist or cannot be read:
    an unmounted crawl folder must stop a run, not pass as an empty one."""


class StageFailure(ImageError):
    """A stage failed on this image (a fault in copyscan or a library it calls); the run goes on."""


class StoreError(CopyscanError):
    """The database cannot be used."""


class IncompatibleDatabase(StoreError):
    """The database was built with another hasher or model; mixing codes would be silent garbage."""


class NotCopyscanDatabase(StoreError):
    """The file is a SQLite database of some other program: copyscan writes nothing into it."""


class DamagedDatabase(StoreError):
    """The database lacks a table copyscan needs, or holds values of the wrong kind."""


class SchemaTooNew(StoreError):
    """The database was written by a newer copyscan with a schema this one does not know."""


class NotFound(CopyscanError):
    """A catalog entry or run named by the user does not exist."""


class ModelError(CopyscanError):
    """The embedding model's weights could not be found or loaded."""


class ReportError(CopyscanError):
    """A report could not be written where it was asked for."""


class DistributedError(CopyscanError):
    """The distributed engine could not start, or could not read its input."""
