"""Container images of the pods bmctl deploys (pinned)."""

METALLB_VERSION = "v0.15.2"
HAPROXY = "docker.io/library/haproxy:2.8-alpine"
KEEPALIVED = "docker.io/osixia/keepalived:2.0.20"
METALLB_CONTROLLER = f"quay.io/metallb/controller:{METALLB_VERSION}"
METALLB_SPEAKER = f"quay.io/metallb/speaker:{METALLB_VERSION}"
