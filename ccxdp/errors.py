"""Domain exceptions. The library raises these; the CLI turns each into one clear line."""

from __future__ import annotations


class CcxdpError(Exception):
    """Base of every error a user can cause or fix."""


class InvalidNameError(CcxdpError):
    """A domain name that cannot be listed."""

    def __init__(self, value: str, reason: str):
        super().__init__(f"invalid domain name {value!r}: {reason}")
        self.value = value
        self.reason = reason


class DatapathError(CcxdpError):
    """Loading, pinning, attaching or detaching failed."""

    def __init__(self, message: str, ifname: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.ifname = ifname
        self.errno = errno


class NotLoadedError(DatapathError):
    """No pinned ccxdp state where the command looked."""


class EnvironmentProblem(CcxdpError):
    """The machine lacks something ccxdp needs: root, bpffs, bcc."""


class LabError(CcxdpError):
    """The lab could not be built, or a lab command failed."""
