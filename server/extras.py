"""Optional parts and the packages they need: the cluster's Redis client and mDNS are extras of the
package (`pip install 'stylize[cluster]'`), so a plain install serves without them. A config that
asks for one that is not installed is one line at start, naming what to install."""

from __future__ import annotations

from importlib.util import find_spec

from server.config import Config

# extra -> (the module it brings, what asks for it)
EXTRAS = {
    "cluster": ("redis", "[cluster] role (or --workers, --role)"),
    "mdns": ("zeroconf", "[osc] mdns"),
}


def wanted(config: Config) -> list[str]:
    """The extras this config uses."""
    uses = {"cluster": config.cluster.enabled, "mdns": config.osc.enabled and config.osc.mdns}
    return [extra for extra, used in uses.items() if used]


def missing(config: Config) -> list[str]:
    """One message per extra the config uses whose package is not installed."""
    problems = []
    for extra in wanted(config):
        module, asked_by = EXTRAS[extra]
        if find_spec(module) is None:
            problems.append(
                f"{asked_by} needs the {module!r} package, which is not installed; "
                f"install it with: pip install 'stylize[{extra}]'"
            )
    return problems
