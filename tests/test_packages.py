"""The node's package manager as a source of node software (bmctl/render/packages.py).

The lab cannot reach pkgs.k8s.io, Docker's repository or a distribution mirror, so this path is covered
by its rendered content and by running the rendered scripts for real against recording stand-ins of
apt-get, apt-mark, dpkg-query, curl, gpg, dnf and rpm: that checks the scripts' own logic (quoting,
order, skipping what is there, a second run changing nothing, refusing another installed version),
not the package managers. Each Debian run happens in a throwaway user+mount namespace whose /etc/apt
is a temporary directory, so the script writes its keyring where it really would.
"""
from __future__ import annotations

import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bmctl.render import packages
from bmctl.render.packages import PackagePlan, minor, os_family, plan
from conftest import require

K8S = "v1.34.2"
DEB_PINS = {"kubelet": "1.34.2-1.1", "kubeadm": "1.34.2-1.1", "kubectl": "1.34.2-1.1",
            "cri-tools": "1.34.0-1.1", "kubernetes-cni": "1.7.1-1.1"}
RPM_PINS = {"kubelet": "1.34.2", "kubeadm": "1.34.2", "kubectl": "1.34.2", "cri-tools": "1.34.0",
            "kubernetes-cni": "1.7.1"}
HELD = ["kubelet", "kubeadm", "kubectl", "cri-tools", "kubernetes-cni"]
# A legal URL whose password is shell: if it ever reached the script unquoted, `rm -rf *` would run.
EVIL_PASSWORD = "';rm$IFS-rf$IFS*;'"
EVIL_PROXY = f"http://bob:{EVIL_PASSWORD}@proxy.example:3128"


def by_path(p: PackagePlan) -> dict:
    return {f.path: f for f in p.files}


# --- family detection -----------------------------------------------------------------------------

@pytest.mark.parametrize("os_release, family", [
    ({"ID": "debian", "VERSION_ID": "12"}, "debian"),
    ({"ID": "ubuntu", "ID_LIKE": "debian", "VERSION_ID": "24.04"}, "debian"),
    ({"ID": "linuxmint", "ID_LIKE": "ubuntu debian"}, "debian"),
    ({"ID": "rocky", "ID_LIKE": "rhel centos fedora", "VERSION_ID": "9.4"}, "rhel"),
    ({"ID": "rhel", "ID_LIKE": "fedora", "VERSION_ID": "9.4"}, "rhel"),
    ({"ID": "fedora", "VERSION_ID": "41"}, "rhel"),
    ({"ID": "almalinux", "ID_LIKE": "rhel centos fedora"}, "rhel"),
    ({"ID": "ol", "ID_LIKE": "fedora"}, "rhel"),
    ({"ID": "centos", "ID_LIKE": "rhel fedora"}, "rhel"),
    ({"ID": "amzn", "ID_LIKE": "centos rhel fedora"}, "rhel"),
    ({"ID": '"rocky"', "ID_LIKE": '"rhel centos fedora"'}, "rhel"),
    ({"ID": "arch"}, None),
    ({"ID": "alpine"}, None),
    ({"ID": "opensuse-leap", "ID_LIKE": "suse opensuse"}, None),
    ({}, None),
])
def test_os_family(os_release, family):
    assert os_family(os_release) == family


@pytest.mark.parametrize("os_release, distro", [
    ({"ID": "rhel"}, "rhel"), ({"ID": "rocky", "ID_LIKE": "rhel centos fedora"}, "rhel"),
    ({"ID": "almalinux"}, "rhel"), ({"ID": "centos"}, "centos"), ({"ID": "fedora"}, "fedora"),
])
def test_docker_distro(os_release, distro):
    assert packages.docker_distro(os_release) == distro


def test_minor():
    assert minor("v1.34.2") == "v1.34"
    assert minor("v1.9.0") == "v1.9"


@pytest.mark.parametrize("bad", ["1.34.2", "v1.34", "v1.34.2-rc.1", "v2.0.0", "v1.034.2", " v1.34.2",
                                 "v1.34.2\n", "v1.34.2; rm -rf /", "", None])
def test_malformed_version_is_refused(bad):
    with pytest.raises(ValueError):
        plan("debian", bad)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError):
        plan("suse", K8S)


# --- Debian ---------------------------------------------------------------------------------------

def test_debian_plan():
    p = plan("debian", K8S)
    files = by_path(p)
    assert set(files) == {"/etc/apt/sources.list.d/kubernetes.list"}
    listing = files["/etc/apt/sources.list.d/kubernetes.list"]
    assert listing.mode == 0o644 and not listing.secret
    assert [line for line in listing.content.splitlines() if not line.startswith("#")] == [
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.34/deb/ /"]
    assert p.family == "debian" and p.packages == DEB_PINS and p.unpinned == ("containerd", "runc")
    s = p.script
    assert "keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg" in s
    assert "key_url=https://pkgs.k8s.io/core:/stable:/v1.34/deb/Release.key" in s
    assert "--dearmor" in s
    for name, version in DEB_PINS.items():
        assert f"\npinned {name} {version}\n" in s
    assert "apt-get -y -q -o Dpkg::Options::=--force-confold" in s
    assert "DEBIAN_FRONTEND=noninteractive" in s
    assert "apt-mark hold" in s and 'install="$install containerd runc"' in s
    assert s.startswith("#!/bin/sh\n") and "\nset -eu\n" in s
    assert "proxy" not in s.split("set -eu", 1)[1].lower()


def test_unpaired_minor_installs_cri_tools_and_cni_unpinned():
    p = plan("debian", "v1.35.0")
    assert p.packages == {"kubelet": "1.35.0-1.1", "kubeadm": "1.35.0-1.1", "kubectl": "1.35.0-1.1"}
    assert p.unpinned == ("cri-tools", "kubernetes-cni", "containerd", "runc")
    assert "\nunpinned cri-tools\nunpinned kubernetes-cni\n" in p.script
    assert "https://pkgs.k8s.io/core:/stable:/v1.35/deb/ /" in p.files[0].content
    assert any("v1.35" in n for n in p.notes)


# --- RHEL -----------------------------------------------------------------------------------------

def test_rhel_plan():
    p = plan("rhel", K8S)
    files = by_path(p)
    assert set(files) == {"/etc/yum.repos.d/kubernetes.repo", "/etc/yum.repos.d/docker-ce.repo"}
    repo = [line for line in files["/etc/yum.repos.d/kubernetes.repo"].content.splitlines() if not line.startswith("#")]
    assert repo == ["[kubernetes]", "name=Kubernetes", "baseurl=https://pkgs.k8s.io/core:/stable:/v1.34/rpm/",
                    "enabled=1", "gpgcheck=1", "gpgkey=https://pkgs.k8s.io/core:/stable:/v1.34/rpm/repodata/repomd.xml.key",
                    "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni"]
    docker = [line for line in files["/etc/yum.repos.d/docker-ce.repo"].content.splitlines() if not line.startswith("#")]
    assert docker == ["[docker-ce-stable]", "name=Docker CE Stable - $basearch",
                      "baseurl=https://download.docker.com/linux/rhel/$releasever/$basearch/stable",
                      "enabled=1", "gpgcheck=1", "gpgkey=https://download.docker.com/linux/rhel/gpg"]
    assert all(f.mode == 0o644 and not f.secret for f in p.files)
    assert p.family == "rhel" and p.packages == RPM_PINS and p.unpinned == ("containerd.io",)
    s = p.script
    assert "dnf install -y --disableexcludes=kubernetes $install" in s
    for name, version in RPM_PINS.items():
        assert f"\npinned {name} {version}\n" in s
    assert 'install="$install containerd.io"' in s
    # SELinux: reported, never changed
    assert "setenforce" not in s and "/etc/selinux/config" not in s
    assert any("SELinux is left as it is" in n for n in p.notes)


@pytest.mark.parametrize("distro", ["centos", "fedora"])
def test_rhel_docker_repository_per_distribution(distro):
    content = by_path(plan("rhel", K8S, docker_distro=distro))["/etc/yum.repos.d/docker-ce.repo"].content
    assert f"baseurl=https://download.docker.com/linux/{distro}/$releasever/$basearch/stable" in content
    assert f"gpgkey=https://download.docker.com/linux/{distro}/gpg" in content
    with pytest.raises(ValueError):
        plan("rhel", K8S, docker_distro="ubuntu")


# --- proxy ----------------------------------------------------------------------------------------

def test_debian_proxy_without_credentials():
    p = plan("debian", K8S, "http://proxy.example:3128", ["localhost", ".svc.cluster.local", "10.0.0.0/8",
                                                            "registry.example"])
    conf = by_path(p)["/etc/apt/apt.conf.d/90bmctl-proxy"]
    assert conf.mode == 0o644 and not conf.secret
    lines = [line for line in conf.content.splitlines() if not line.startswith("//")]
    assert lines == ['Acquire::http::Proxy "http://proxy.example:3128";',
                     'Acquire::https::Proxy "http://proxy.example:3128";',
                     'Acquire::http::Proxy::localhost "DIRECT";', 'Acquire::https::Proxy::localhost "DIRECT";',
                     'Acquire::http::Proxy::registry.example "DIRECT";',
                     'Acquire::https::Proxy::registry.example "DIRECT";']
    assert "--noproxy localhost,.svc.cluster.local,10.0.0.0/8,registry.example " in p.script
    assert any(".svc.cluster.local, 10.0.0.0/8" in n for n in p.notes)


def test_debian_proxy_credentials_stay_in_a_root_only_file():
    p = plan("debian", K8S, "http://bob:s3cr%40t@proxy.example:3128")
    conf = by_path(p)["/etc/apt/apt.conf.d/90bmctl-proxy"]
    assert conf.mode == 0o600 and conf.secret
    assert 'Acquire::https::Proxy "http://bob:s3cr%40t@proxy.example:3128";' in conf.content
    assert "s3cr" not in p.script and "bob" not in p.script
    assert by_path(p)["/etc/apt/sources.list.d/kubernetes.list"].mode == 0o644


def test_rhel_proxy():
    p = plan("rhel", K8S, "http://bob:s3cr%40t@proxy.example:3128", ["localhost"])
    for f in p.files:
        assert f.mode == 0o600 and f.secret, f.path
        assert "proxy=http://proxy.example:3128\nproxy_username=bob\nproxy_password=s3cr@t\n" in f.content
    assert "s3cr" not in p.script and "bob" not in p.script and "proxy" not in p.script.lower()
    plain = plan("rhel", K8S, "http://proxy.example:3128")
    assert all(f.mode == 0o644 and "proxy=http://proxy.example:3128\n" in f.content
               and "proxy_password" not in f.content for f in plain.files)


def test_rhel_no_proxy_sends_a_repository_direct():
    p = by_path(plan("rhel", K8S, "http://bob:pw@proxy.example:3128", [".k8s.io"]))
    k8s, docker = p["/etc/yum.repos.d/kubernetes.repo"], p["/etc/yum.repos.d/docker-ce.repo"]
    assert k8s.content.endswith("\nproxy=\n") and "pw" not in k8s.content and k8s.mode == 0o644
    assert "proxy_password=pw" in docker.content and docker.mode == 0o600


@pytest.mark.parametrize("bad", [
    "http://proxy.example:3128/'; rm -rf /",    # spaces: not a URL, refused rather than escaped
    "http://proxy.example:3128\nAcquire::x",     # a second apt.conf line
    'http://proxy.example:3128/"',               # closes apt.conf's quotes
    "http://proxy.example:3128/path",            # scheme://[user:password@]host[:port] only
    "socks5://proxy.example:1080",
    "proxy.example:3128",
    "http://proxy.example:99999",
    "http://bob:%0Aevil@proxy.example:3128",     # a newline once decoded (dnf's ini)
])
def test_bad_proxy_is_refused(bad):
    for family in ("debian", "rhel"):
        with pytest.raises(ValueError):
            plan(family, K8S, bad)


@pytest.mark.parametrize("bad", [["localhost'; rm -rf /"], ["a b"], ["$(reboot)"], ["x\ny"]])
def test_bad_no_proxy_is_refused(bad):
    with pytest.raises(ValueError):
        plan("debian", K8S, "http://proxy.example:3128", bad)


def test_dnf_would_expand_dollar_in_credentials():
    with pytest.raises(ValueError, match="dnf"):
        plan("rhel", K8S, EVIL_PROXY)
    plan("debian", K8S, EVIL_PROXY)  # apt takes it as it is


def test_malicious_proxy_never_reaches_the_script():
    p = plan("debian", K8S, EVIL_PROXY, ["localhost"])
    assert EVIL_PASSWORD not in p.script and "rm$IFS" not in p.script
    conf = by_path(p)["/etc/apt/apt.conf.d/90bmctl-proxy"]
    assert f'Acquire::https::Proxy "{EVIL_PROXY}";' in conf.content and conf.mode == 0o600


def test_script_values_are_shell_quoted():
    # A noProxy entry with a glob character reaches curl as one literal word, never expanded.
    p = plan("debian", K8S, "http://proxy.example:3128", ["*.example", "localhost"])
    curl = next(line for line in p.script.splitlines() if "curl -fsSL" in line)
    assert "--noproxy '*.example,localhost'" in curl
    assert shlex.split(curl) == ["https_proxy=$proxy", "curl", "-fsSL", "--retry", "3", "--noproxy",
                                 "*.example,localhost", "-o", "$tmp/Release.key", "$key_url"]


# --- syntax of every variant ----------------------------------------------------------------------

VARIANTS = [(family, version, proxy, no_proxy)
            for family in ("debian", "rhel")
            for version in (K8S, "v1.35.0")
            for proxy, no_proxy in ((None, []), ("http://proxy.example:3128", []),
                                    ("https://bob:pw@proxy.example:3129", ["localhost", "*.example", ".svc", "10.0.0.0/8"]))]


@pytest.mark.parametrize("family, version, proxy, no_proxy", VARIANTS)
def test_script_syntax(family, version, proxy, no_proxy):
    script = plan(family, version, proxy, no_proxy).script
    for shell in ("/bin/sh", shutil.which("dash"), shutil.which("bash")):
        if shell:
            args = [shell, "--posix", "-n"] if shell.endswith("bash") else [shell, "-n"]
            proc = subprocess.run(args, input=script, text=True, capture_output=True, timeout=10)
            assert proc.returncode == 0, f"{shell}: {proc.stderr}"


# --- running the scripts against recording stand-ins ----------------------------------------------

_LOG = r'''
log() { { printf '%s\037' "${0##*/}" "$@"; printf '\n'; } >> "$BMCTL_T/log"; }
'''
STUBS = {
    "dpkg-query": _LOG + r'''
pkg=; for a; do pkg=$a; done
if [ -f "$BMCTL_T/dpkg/$pkg" ]; then cat "$BMCTL_T/dpkg/$pkg"; exit 0; fi
echo "dpkg-query: no packages found matching $pkg" >&2; exit 1
''',
    "apt-get": _LOG + r'''
log "$@"
mode=
for a; do
  if [ "$mode" = install ]; then
    name=${a%%=*}; version=${a#*=}; [ "$name" = "$a" ] && version=9.9-distro
    mkdir -p "$BMCTL_T/dpkg"; printf 'install installed %s' "$version" > "$BMCTL_T/dpkg/$name"
    [ -f "$BMCTL_T/available/$name" ] && cp "$BMCTL_T/available/$name" "$BMCTL_T/bin/$name"
  fi
  case $a in install|update) mode=$a ;; esac
done
exit 0
''',
    "apt-mark": _LOG + r'''
log "$@"
shift
for p; do read -r want status version < "$BMCTL_T/dpkg/$p"; printf 'hold %s %s' "$status" "$version" > "$BMCTL_T/dpkg/$p"; done
''',
    "curl": _LOG + r'''
log "$@"
printf '%s' "${https_proxy-<unset>}" > "$BMCTL_T/curl-https_proxy"
out=; prev=; for a; do [ "$prev" = -o ] && out=$a; prev=$a; done
printf -- '-----BEGIN PGP PUBLIC KEY BLOCK-----\nfake\n-----END PGP PUBLIC KEY BLOCK-----\n' > "$out"
''',
    "gpg": _LOG + r'''
log "$@"
out=; prev=; for a; do [ "$prev" = -o ] && out=$a; prev=$a; done
printf 'binary-keyring' > "$out"
''',
    "rpm": _LOG + r'''
pkg=; for a; do pkg=$a; done
if [ -f "$BMCTL_T/rpm/$pkg" ]; then
  case "$*" in *--qf*) cat "$BMCTL_T/rpm/$pkg" ;; *) echo "$pkg-$(cat "$BMCTL_T/rpm/$pkg")" ;; esac; exit 0
fi
echo "package $pkg is not installed"; exit 1
''',
    "dnf": _LOG + r'''
log "$@"
for a; do
  case $a in install|-*) continue ;; esac
  name=${a%-[0-9]*}; version=${a#"$name"}; version=${version#-}; [ -n "$version" ] || version=9.9
  mkdir -p "$BMCTL_T/rpm"; printf '%s' "$version" > "$BMCTL_T/rpm/$name"
done
''',
    "getenforce": "echo Enforcing\n",
}
REAL_TOOLS = ("sed", "mktemp", "mkdir", "chmod", "mv", "rm", "cat", "cp")


class Node:
    """A throwaway stand-in node: a PATH of stubs and a few real tools, a dpkg/rpm database of files,
    and (Debian) its own /etc/apt."""

    def __init__(self, root: Path, family: str):
        self.root, self.family = root, family
        self.bin, self.available, self.etc_apt = root / "bin", root / "available", root / "etc-apt"
        for d in (self.bin, self.available, root / "dpkg", root / "rpm", self.etc_apt / "apt.conf.d",
                  self.etc_apt / "sources.list.d", root / "cwd"):
            d.mkdir(parents=True, exist_ok=True)
        for name, body in STUBS.items():
            self.stub(name, body)
        for tool in REAL_TOOLS:
            path = shutil.which(tool)
            require(path is not None, tool)
            (self.bin / tool).symlink_to(path)

    def stub(self, name: str, body: str, where: Path | None = None) -> None:
        path = (where or self.bin) / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)

    def remove_tool(self, name: str) -> None:
        """Make `name` missing until apt-get installs it."""
        (self.bin / name).rename(self.available / name)

    def installed(self, name: str, version: str, held: bool = False) -> None:
        if self.family == "debian":
            (self.root / "dpkg" / name).write_text(f"{'hold' if held else 'install'} installed {version}")
        else:
            (self.root / "rpm" / name).write_text(version)

    def write(self, p: PackagePlan) -> None:
        for f in p.files:
            if f.path.startswith("/etc/apt/"):
                target = self.etc_apt / f.path.removeprefix("/etc/apt/")
                target.write_text(f.content)
                target.chmod(f.mode)

    @property
    def keyring(self) -> Path:
        return self.etc_apt / "keyrings" / "kubernetes-apt-keyring.gpg"

    def run(self, p: PackagePlan) -> subprocess.CompletedProcess:
        self.write(p)
        (self.root / "log").write_text("")
        script = self.root / "script.sh"
        script.write_text(p.script)
        env = {"PATH": str(self.bin), "BMCTL_T": str(self.root), "HOME": str(self.root)}
        if self.family == "debian":
            argv = [UNSHARE, "--user", "--map-root-user", "--mount", "/bin/sh", "-c",
                    '"$2" --bind "$0" /etc/apt && exec /bin/sh "$1"', str(self.etc_apt), str(script), MOUNT]
        else:
            argv = ["/bin/sh", str(script)]
        return subprocess.run(argv, env=env, cwd=self.root / "cwd", capture_output=True, text=True, timeout=20)

    def calls(self, *names: str) -> list[list[str]]:
        rows = [line.split("\x1f")[:-1] for line in (self.root / "log").read_text().splitlines()]
        return [r for r in rows if not names or r[0] in names]


UNSHARE = shutil.which("unshare") or "unshare"
MOUNT = shutil.which("mount") or "/bin/mount"


def _namespaces_work() -> bool:
    if not Path("/etc/apt").is_dir() or not shutil.which("unshare"):
        return False
    return subprocess.run([UNSHARE, "--user", "--map-root-user", "--mount", "true"],
                          capture_output=True, timeout=10).returncode == 0


@pytest.fixture
def debian(tmp_path):
    require(_namespaces_work(), "unshare --user --mount (a private /etc/apt for the Debian script) and /etc/apt")
    return Node(tmp_path, "debian")


@pytest.fixture
def rhel(tmp_path):
    return Node(tmp_path, "rhel")


APT = ["apt-get", "-y", "-q", "-o", "Dpkg::Options::=--force-confold"]


def test_debian_fresh_node_then_second_run_changes_nothing(debian):
    p = plan("debian", K8S)
    first = debian.run(p)
    assert first.returncode == 0, first.stderr
    assert debian.calls("curl", "gpg", "apt-get", "apt-mark") == [
        ["curl", "-fsSL", "--retry", "3", "-o", debian.calls("curl")[0][-2],
         "https://pkgs.k8s.io/core:/stable:/v1.34/deb/Release.key"],
        ["gpg", "--batch", "--no-tty", "--homedir", debian.calls("gpg")[0][4], "--yes", "--dearmor", "-o",
         "/etc/apt/keyrings/kubernetes-apt-keyring.gpg.bmctl-new", debian.calls("gpg")[0][-1]],
        APT + ["update"],
        APT + ["install", *[f"{n}={v}" for n, v in DEB_PINS.items()], "containerd", "runc"],
        ["apt-mark", "hold", *HELD],
    ]
    assert debian.keyring.read_text() == "binary-keyring"
    assert stat.S_IMODE(debian.keyring.stat().st_mode) == 0o644
    assert stat.S_IMODE(debian.keyring.parent.stat().st_mode) == 0o755
    assert not list(debian.keyring.parent.glob("*.bmctl-*"))
    assert (debian.root / "curl-https_proxy").read_text() == "<unset>"
    assert not Path(debian.calls("gpg")[0][4]).exists()  # the download directory is gone
    assert first.stdout.splitlines()[-1].startswith("bmctl: changed:")

    second = debian.run(p)
    assert second.returncode == 0, second.stderr
    assert debian.calls("curl", "gpg", "apt-get", "apt-mark") == []
    assert second.stdout.splitlines()[-1] == "bmctl: unchanged"


def test_debian_keyring_present_is_not_fetched_again(debian):
    debian.keyring.parent.mkdir()
    debian.keyring.write_text("existing")
    result = debian.run(plan("debian", K8S))
    assert result.returncode == 0, result.stderr
    assert debian.calls("curl", "gpg") == []
    assert [c[5] for c in debian.calls("apt-get")] == ["update", "install"]
    assert debian.keyring.read_text() == "existing"


def test_debian_installs_curl_and_gpg_first_when_missing(debian):
    debian.remove_tool("curl")
    debian.remove_tool("gpg")
    result = debian.run(plan("debian", K8S))
    assert result.returncode == 0, result.stderr
    assert [(c[0], c[5] if c[0] == "apt-get" else "") for c in debian.calls("apt-get", "curl", "gpg")] == [
        ("apt-get", "update"), ("apt-get", "install"), ("curl", ""), ("gpg", ""), ("apt-get", "update"),
        ("apt-get", "install")]
    assert debian.calls("apt-get")[1][5:] == ["install", "ca-certificates", "curl", "gpg"]
    assert debian.run(plan("debian", K8S)).stdout.splitlines()[-1] == "bmctl: unchanged"


def test_debian_partly_installed_node(debian):
    debian.keyring.parent.mkdir()
    debian.keyring.write_text("existing")
    debian.installed("kubelet", "1.34.2-1.1", held=True)
    debian.installed("kubeadm", "1.34.2-1.1")
    debian.installed("containerd.io", "1.7.28-1")
    result = debian.run(plan("debian", K8S))
    assert result.returncode == 0, result.stderr
    assert debian.calls("apt-get")[1] == APT + ["install", "kubectl=1.34.2-1.1", "cri-tools=1.34.0-1.1",
                                                "kubernetes-cni=1.7.1-1.1"]
    assert debian.calls("apt-mark") == [["apt-mark", "hold", *HELD[1:]]]


@pytest.mark.parametrize("held", [True, False])
def test_debian_refuses_another_installed_version(debian, held):
    debian.installed("kubelet", "1.33.5-1.1", held=held)
    result = debian.run(plan("debian", K8S))
    assert result.returncode != 0
    how = "installed and held" if held else "installed"
    assert f"kubelet is {how} at version 1.33.5-1.1, but this cluster's Kubernetes v1.34.2 pins kubelet=1.34.2-1.1" \
        in result.stderr
    assert "kubeadm's upgrade procedure" in result.stderr
    assert debian.calls("apt-get", "apt-mark", "curl") == []


def test_debian_proxy_goes_to_curl_by_environment_only(debian):
    canary = debian.root / "cwd" / "canary"
    canary.write_text("still here")
    p = plan("debian", K8S, EVIL_PROXY, ["localhost", ".svc"])
    result = debian.run(p)
    assert result.returncode == 0, result.stderr
    assert canary.exists()
    assert (debian.root / "curl-https_proxy").read_text() == EVIL_PROXY
    curl = debian.calls("curl")[0]
    assert curl[:6] == ["curl", "-fsSL", "--retry", "3", "--noproxy", "localhost,.svc"]
    log = (debian.root / "log").read_text()
    assert EVIL_PASSWORD not in log and "bob" not in log
    assert EVIL_PASSWORD not in result.stdout + result.stderr
    assert stat.S_IMODE((debian.etc_apt / "apt.conf.d" / "90bmctl-proxy").stat().st_mode) == 0o600


def test_debian_unpaired_minor(debian):
    result = debian.run(plan("debian", "v1.35.0"))
    assert result.returncode == 0, result.stderr
    assert debian.calls("apt-get")[1][5:] == ["install", "kubelet=1.35.0-1.1", "kubeadm=1.35.0-1.1",
                                              "kubectl=1.35.0-1.1", "cri-tools", "kubernetes-cni", "containerd", "runc"]
    assert debian.run(plan("debian", "v1.35.0")).stdout.splitlines()[-1] == "bmctl: unchanged"


def test_rhel_fresh_node_then_second_run_changes_nothing(rhel):
    p = plan("rhel", K8S, "http://bob:pw@proxy.example:3128")
    first = rhel.run(p)
    assert first.returncode == 0, first.stderr
    assert rhel.calls("dnf") == [["dnf", "install", "-y", "--disableexcludes=kubernetes",
                                  *[f"{n}-{v}" for n, v in RPM_PINS.items()], "containerd.io"]]
    assert "SELinux is enforcing; bmctl leaves it so" in first.stderr
    assert "pw" not in (rhel.root / "log").read_text()
    second = rhel.run(p)
    assert second.returncode == 0, second.stderr
    assert rhel.calls("dnf") == []
    assert second.stdout.splitlines()[-1] == "bmctl: unchanged"


def test_rhel_refuses_another_installed_version(rhel):
    rhel.installed("kubeadm", "1.35.0")
    result = rhel.run(plan("rhel", K8S))
    assert result.returncode != 0
    assert "kubeadm is installed at version 1.35.0, but this cluster's Kubernetes v1.34.2 pins kubeadm-1.34.2" \
        in result.stderr
    assert rhel.calls("dnf") == []


def test_rhel_keeps_an_installed_containerd(rhel):
    rhel.installed("containerd", "1.7.27")
    result = rhel.run(plan("rhel", K8S))
    assert result.returncode == 0, result.stderr
    assert "containerd.io" not in rhel.calls("dnf")[0]
