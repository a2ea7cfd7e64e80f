"""Errors of the DES stamp package (independent of the pipeline's exception classes)."""


class DesStampError(ValueError):
    """A problem a user can fix: bad catalogue, geometry table, tile file or option."""
