"""Container images of the pods bmctl deploys (pinned)."""

METALLB_VERSION = "v0.15.2"
HAPROXY = "docker.io/library/haproxy:2.8-alpine"
KEEPALIVED = "docker.io/osixia/keepalived:2.0.20"
METALLB_CONTROLLER = f"quay.io/metallb/controller:{METALLB_VERSION}"
METALLB_SPEAKER = f"quay.io/metallb/speaker:{METALLB_VERSION}"

# flannel (the pod network): the images upstream's Documentation/kube-flannel.yml of this release
# names (github.com/flannel-io/flannel tag v0.27.4; its flannel-cni-plugin is
# github.com/flannel-io/cni-plugin tag v1.8.0-flannel1).
FLANNEL_VERSION = "v0.27.4"
FLANNEL = f"ghcr.io/flannel-io/flannel:{FLANNEL_VERSION}"
FLANNEL_CNI_PLUGIN = "ghcr.io/flannel-io/flannel-cni-plugin:v1.8.0-flannel1"
