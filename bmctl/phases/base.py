"""A command is an ordered list of phases; each phase has a title, a plan (what a dry run
shows and writes) and a run (idempotent: a second run changes nothing)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from bmctl.config.model import ClusterConfig
from bmctl.render import NodeFacts, RenderedFile
from bmctl.secrets import ClusterSecrets

CLUSTER = "cluster"  # the target of steps that act on the Kubernetes API, not on one node


@dataclass
class Step:
    target: str                 # a node address, or CLUSTER
    title: str
    files: list[RenderedFile] = field(default_factory=list)


@dataclass
class Context:
    config: ClusterConfig
    secrets: ClusterSecrets
    facts: dict[str, NodeFacts]
    dry_run: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    inventory: Any = None   # bmctl.host.Inventory on a real run
    progress: Any = None    # bmctl.progress.Progress on a real run
    bundle: Any = None      # bmctl.release.bundle.Bundle (verified before any phase runs) when the
                            # config's header names one

    def cgroup_driver(self) -> str:
        """The cluster's cgroup driver, from every node's init system (see render.node_software)."""
        from bmctl.render.node_software import cgroup_driver
        return cgroup_driver(list(self.node_facts([n.address for n in self.config.all_nodes]).values())
                             if not self.dry_run else [f for f in self.facts.values()])

    @property
    def release(self):
        """The release this config installs (bmctl.release.Release)."""
        from bmctl import release
        return release.of(self.config)

    def record(self, address: str, changes: list) -> list:
        """Remember what sync_files did on a node, for the run's summary."""
        self.options.setdefault("file_changes", {}).setdefault(address, []).extend(changes)
        return changes

    def only(self, addresses: list[str]) -> list[str]:
        """The addresses this run works on: all, or those in options["only_nodes"] (an update that
        adds nodes provisions and joins just those)."""
        only = self.options.get("only_nodes")
        return addresses if only is None else [a for a in addresses if a in only]

    def known_facts(self, address: str) -> NodeFacts | None:
        """The node's facts if they were read from it (not assumed, as in a dry run)."""
        facts = self.facts.get(address)
        return None if facts is None or facts.assumed else facts

    def node_facts(self, addresses: list[str]) -> dict[str, NodeFacts]:
        """Facts read from the nodes (preflight reads them; with --force they are read here)."""
        missing = [a for a in addresses if self.known_facts(a) is None]
        if missing:
            from bmctl.phases.facts import gather
            self.facts.update(gather(self.config, self.inventory, missing))
        return {a: self.facts[a] for a in addresses}


class Phase(ABC):
    name: str
    title: str

    def applies(self, ctx: Context) -> bool:
        return True

    @abstractmethod
    def plan(self, ctx: Context) -> list[Step]:
        """Every step, per node, with the files it writes. Touches nothing."""

    @abstractmethod
    def run(self, ctx: Context) -> None:
        """Do the steps on the machines; idempotent (a second run changes nothing)."""
