"""Which client token a connection offers, and where it came from, to say when it is refused.

In this order, the first there is:

1. the token the caller passed (``token=``, ``--token``);
2. ``$CROWDCOMPUTE_TOKEN`` when ``$CROWDCOMPUTE_ADDRESS`` names this foreman
   (exported together: CONTRACT's ``connect()`` with no host);
3. for a loopback foreman, the token in its connection file
   (``$CROWDCOMPUTE_HOME/foreman-PORT.json``): written by this user's own
   foreman on that port, it is the right token for it;
4. ``$CROWDCOMPUTE_TOKEN``, if the user meant it for this foreman: when
   ``$CROWDCOMPUTE_ADDRESS`` is unset. Exported
   with an address, the token is that foreman's: it is not sent to another
   one, which could be anyone's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .wire.addresses import Address, connection_file_path, parse_address, read_connection_file
from .wire.constants import ADDRESS_VARIABLE, TOKEN_VARIABLE

__all__ = ["ClientToken", "choose_client_token"]


@dataclass(frozen=True)
class ClientToken:
    """The token to offer (None: none was found) and how it was found."""

    value: str | None
    source: str  # "token=", "the connection file PATH", "$CROWDCOMPUTE_TOKEN"; "" when none
    looked_for: Path | None = None  # the connection file looked for (a loopback foreman)
    withheld: str | None = None  # the address $CROWDCOMPUTE_TOKEN goes with, when it was not sent

    def refused(self, url: str) -> str:
        """What the foreman at ``url`` refused, and what to do about it."""
        what = "pass the foreman's client token (token= / --token)"
        if self.value is None:
            text = f"the foreman at {url} refused the connection: no token was given"
            if self.looked_for is not None:
                text += f" and no connection file was found at {self.looked_for}"
            if self.withheld is None:
                return f"{text}: {what}, or export ${TOKEN_VARIABLE}"
            return (
                f"{text}; ${TOKEN_VARIABLE} was not sent, because it goes with ${ADDRESS_VARIABLE} "
                f"({self.withheld}), another foreman: {what}, or point ${ADDRESS_VARIABLE} at this one"
            )
        if self.source == f"${TOKEN_VARIABLE}":
            return f"the foreman at {url} refused the token in ${TOKEN_VARIABLE}: {what}, or export its token there"
        if self.source != "token=":
            return f"the foreman at {url} refused the token in {self.source} (left by an earlier foreman?): {what}"
        return f"the foreman at {url} refused this client token: {what}, or ${TOKEN_VARIABLE}"


def choose_client_token(address: Address, token: str | None) -> ClientToken:
    """The token to offer the foreman at ``address``, ``token`` being the caller's (see the module's order)."""
    if token:
        return ClientToken(token, "token=")
    exported = os.environ.get(TOKEN_VARIABLE)
    meant_for = os.environ.get(ADDRESS_VARIABLE)
    if exported and meant_for and _same_foreman(meant_for, address):
        # Exported together for this very foreman: theirs, over any connection file a foreman
        # once left on this port (a tunnel to a remote foreman on a local port, say).
        return ClientToken(exported, f"${TOKEN_VARIABLE}")
    looked_for = None
    if address.loopback:
        found = read_connection_file(address.port)
        looked_for = connection_file_path(address.port)
        if found is not None:
            return ClientToken(found["token"], f"the connection file {looked_for}")
    if exported and meant_for and not _same_foreman(meant_for, address):
        return ClientToken(None, "", looked_for, withheld=meant_for)
    if exported:
        return ClientToken(exported, f"${TOKEN_VARIABLE}")
    return ClientToken(None, "", looked_for)


def _same_foreman(url: str, address: Address) -> bool:
    try:
        return parse_address(url) == address
    except ValueError:
        return False
