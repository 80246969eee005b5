"""The configuration in force, and its reload on SIGHUP.

A reload reads and validates the file again; only when that succeeds does the new policy and peer
table replace the old one, in one reference swap that new associations read and running ones
never see (they keep the decision they got). Sections that need sockets or files reopened keep
their old values until a restart, and the log says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pacsd.logs import get_logger
from pacsd.policy.engine import Policy
from pacsd.policy.identity import IdentityVerifier
from pacsd.settings import ConfigError, Peer, Settings, load_settings

log = get_logger("pacsd.config")

RELOADABLE = ("policies", "peers", "identity")  # identity: users and JWT keys


@dataclass(frozen=True)
class Active:
    """One consistent configuration: the settings and the policy compiled from them."""

    settings: Settings
    policy: Policy

    @classmethod
    def from_settings(cls, settings: Settings) -> Active:
        """Compile the policy of `settings`."""
        return cls(settings, compile_policy(settings))


def compile_policy(settings: Settings) -> Policy:
    """The policy engine's view of the settings: rules, the global association limit, and the
    users and JWT keys that verify user identities (read here, once per load)."""
    identity = IdentityVerifier.from_settings(settings.identity)
    network = settings.network
    return Policy.compile(
        settings.policies,
        network.max_associations,
        identity,
        network.max_associations_per_address,
    )


class RuntimeConfig:
    """Holds the active configuration; `reload` swaps it when the file is valid."""

    def __init__(self, settings: Settings, source: Path | None) -> None:
        self._active = Active.from_settings(settings)
        self.source = source

    @property
    def active(self) -> Active:
        """The configuration new associations use."""
        return self._active

    def policy(self) -> Policy:
        """The policy new associations are decided by."""
        return self._active.policy

    def peers(self) -> dict[str, Peer]:
        """The AE table in force, by AE title (C-MOVE destinations)."""
        return {peer.ae_title: peer for peer in self._active.settings.peers}

    def reload(self) -> bool:
        """Read the configuration again; True when the new policies and peers are in force."""
        if self.source is None:
            log.warning("reload: no configuration file (embedded default); nothing to reload")
            return False
        try:
            loaded = load_settings(self.source)
            candidate = Active.from_settings(
                self._active.settings.model_copy(
                    update={name: getattr(loaded, name) for name in RELOADABLE}
                )
            )
        except ConfigError as exc:
            for line in exc.lines:
                log.error("reload refused; the previous configuration stays in force", error=line)
            return False
        except ValueError as exc:
            log.error("reload refused; the previous configuration stays in force", error=str(exc))
            return False
        previous = self._active.settings
        pending = [
            name
            for name in type(loaded).model_fields
            if name not in RELOADABLE and getattr(loaded, name) != getattr(previous, name)
        ]
        self._active = candidate
        log.info(
            "configuration reloaded",
            config=str(self.source),
            rules=[rule.name for rule in candidate.settings.policies],
            peers=len(candidate.settings.peers),
        )
        if pending:
            log.warning("these sections changed and need a restart to apply", sections=pending)
        return True
