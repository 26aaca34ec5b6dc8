"""Pure renderers: config (+ node facts, + secrets) -> file contents. No I/O besides templates."""
from bmctl.render.controlplane_lb import lb_node_files
from bmctl.render.engine import RenderedFile
from bmctl.render.facts import NodeFacts, assumed_facts
from bmctl.render.kubeadm import kubeadm_config
from bmctl.render.metallb import kube_proxy_config, metallb_manifests

__all__ = ["lb_node_files", "RenderedFile", "NodeFacts", "assumed_facts", "kubeadm_config",
           "kube_proxy_config", "metallb_manifests"]
