"""The phases of `bmctl create cluster`, in order (as k0sctl structures `apply`)."""
from bmctl.phases.base import CLUSTER, Context, Phase, Step
from bmctl.phases.controlplane_lb import ControlPlaneLB
from bmctl.phases.dataplane_lb import DataPlaneLB
from bmctl.phases.ingress import Ingress
from bmctl.phases.kubeadm import Kubeadm
from bmctl.phases.network import PodNetwork
from bmctl.phases.preflight import Preflight
from bmctl.phases.provision import Provision
from bmctl.phases.verify import Verify


def create_cluster_phases() -> list[Phase]:
    return [Preflight(), Provision(), ControlPlaneLB(), Kubeadm(), PodNetwork(), DataPlaneLB(), Ingress(), Verify()]


__all__ = ["CLUSTER", "Context", "Phase", "Step", "create_cluster_phases"]
