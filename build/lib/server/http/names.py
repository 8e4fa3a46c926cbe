"""Stream names in a URL path (`/api/outputs/{name}/...`, `/api/whip/{name}`, `/view/{name}`): checked here."""

from __future__ import annotations

import re

from aiohttp import web

from server.fields import NAME_PATTERN, publishable
from server.http.errors import invalid

NAME_RULE = "letters, digits, '.', '_' and '-', at most 64, the first a letter or digit"


def path_name(request: web.Request, *, latest: bool = True) -> str:
    """`{name}` of the path; a 422 naming the field when it is not a name, or `latest` where a stream is meant."""
    name = request.match_info["name"]
    if not re.fullmatch(NAME_PATTERN, name):
        raise invalid("name", f"{NAME_RULE}; got {name!r}")
    if not latest:
        try:
            publishable(name)
        except ValueError as e:
            raise invalid("name", str(e)) from e
    return name
