"""The team's server, over SSH: the transport (``_ssh``), tunnels (``_tunnel``),
``server check`` (``check``), images to the server (``ship``) and ``git push`` deploys
(``push``)."""

from ._ssh import SSH, Target, parse_target, validate_target
from ._tunnel import Tunnel

__all__ = ["SSH", "Target", "Tunnel", "parse_target", "validate_target"]
