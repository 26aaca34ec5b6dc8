"""`bmctl push images`: every image of a bundle (or an OCI layout folder) into a private registry."""
from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape

from bmctl.errors import BmctlError
from bmctl.output import out
from bmctl.release import oci


def push_images(source: Path, private_registry: str, cacert: Path | None, credential_file: Path | None,
                need_credential: bool) -> list[oci.ImagePush]:
    """Push every image of SOURCE (a bundle tar with the layout under images/, or an OCI layout
    folder) to PRIVATE_REGISTRY (HOST:PORT[/NAMESPACE]), each under its path without the source host
    (registry.k8s.io/pause:3.10.1 -> HOST:PORT[/NAMESPACE]/pause:3.10.1)."""
    start = time.monotonic()
    layout = oci.open_layout(source)
    username = password = None
    if credential_file:
        creds = oci.credentials_from_docker_config(credential_file, private_registry)
        if creds is None:
            host = oci.Registry(private_registry).netloc
            raise BmctlError(f"credential file {credential_file} has no credentials for {host} (auths.{host}).",
                             f'add {{"auths": {{"{host}": {{"auth": "<base64 of USER:PASSWORD>"}}}}}} to it, or '
                             "pass --need-credential to type them.")
        username, password = creds
    elif need_credential:
        host = oci.Registry(private_registry).netloc
        username = typer.prompt(f"Username for {host}")
        password = typer.prompt(f"Password for {username}@{host}", hide_input=True)
    registry = oci.Registry(private_registry, cacert=cacert, username=username, password=password)
    registry.ping()  # TLS, reachability and credentials fail here, before any blob is read
    images = layout.images()
    out.print(escape(f"Pushing {len(images)} image(s) from {source} to {registry.name}"
                     + (f" as {username}" if username else "") + "."))

    def line(result: oci.ImagePush) -> None:
        what = "already there" if result.already else \
            f"{result.blobs_sent} blob(s), {result.bytes_sent / 2**20:.1f} MiB sent"
        pushed = result.reference if "@" in result.reference else f"{result.reference}@{result.digest}"
        out.print(escape(f"  {result.source} -> {pushed} ({what})"))

    results = oci.push_layout(layout, registry, on_image=line)
    blobs = sum(r.blobs_sent for r in results)
    sent = sum(r.bytes_sent for r in results)
    out.print(escape(f"Pushed {len(results)} image(s) to {registry.name}: {blobs} blob(s) sent "
                     f"({sent / 2**20:.1f} MiB, {sent} bytes), {sum(r.already for r in results)} already there, "
                     f"in {time.monotonic() - start:.1f}s."))
    return results
