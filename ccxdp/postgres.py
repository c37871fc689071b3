"""PostgreSQL connection strings, as every part of ccxdp that connects takes them (the fleet
store, FreeRADIUS's radacct): libpq URIs or key=value strings, never with a password.

Passwords come by libpq's own conventions (PGPASSFILE, ~/.pgpass, a service file), so none
sits in argv, a config file or a log line. A string that fails to parse is not echoed, nor is
psycopg's message about it: either may repeat a password.
"""

from __future__ import annotations

from ccxdp.errors import CcxdpError


class ConnInfoError(CcxdpError):
    pass


def check_conninfo(text: str, what: str) -> str:
    """``text`` when it parses and holds no password; else ConnInfoError naming ``what``."""
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(text)
    except Exception:  # noqa: BLE001 - psycopg.ProgrammingError and kin; see the docstring
        raise ConnInfoError(f"{what} is not a libpq URI or key=value string") from None
    if params.get("password"):
        raise ConnInfoError(
            f"{what} holds a password: leave it out and give it by libpq's conventions "
            f"(~/.pgpass, a file named by PGPASSFILE, or a service file)")
    return text
