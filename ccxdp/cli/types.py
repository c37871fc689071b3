"""Parameter types: bad values are refused by click, naming the parameter."""

from __future__ import annotations

import click

from ..errors import InvalidNameError
from ..names import normalize


class DomainNameType(click.ParamType):
    name = "domain"

    def convert(self, value, param, ctx):
        try:
            return normalize(value)
        except InvalidNameError as e:
            self.fail(str(e), param, ctx)


class InterfaceType(click.ParamType):
    name = "interface"

    def convert(self, value, param, ctx):
        # IFNAMSIZ is 16 with the terminating NUL.
        if not value or len(value) > 15 or "/" in value or any(c.isspace() for c in value):
            self.fail(f"{value!r} is not a valid interface name", param, ctx)
        return value


DOMAIN = DomainNameType()
INTERFACE = InterfaceType()
