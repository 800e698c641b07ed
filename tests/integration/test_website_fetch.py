"""The website step (components/render/website.py) for real: the fetch
script against a local tarball (file://, through curl) and a local git
repository (no network), the switch of the served link, a failed fetch that
keeps the old site, and every file the step puts on the proxy through
shellcheck / systemd-analyze."""
from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from components.render import website
from components.render.hostfiles import install_script
from tests.support.settings import proxy_settings
from tests.support.tools import tool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCRIPT = website.FILES / "idr-website-fetch"


def git_bin() -> str:
    return tool("git")


def config(tmp: Path, root: Path, **raw) -> Path:
    """The rendered website.conf, with its root moved into the test's tmp."""
    s = proxy_settings(**raw)
    text = website.config_text(s)
    assert f"IDR_WEBSITE_ROOT={website.WWW_ROOT}\n" in text
    path = tmp / "website.conf"
    path.write_text(text.replace(f"IDR_WEBSITE_ROOT={website.WWW_ROOT}\n", f"IDR_WEBSITE_ROOT={root}\n"))
    return path


def fetch(conf: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(conf.parent)}
    return subprocess.run(["bash", str(SCRIPT), str(conf)], capture_output=True, text=True, timeout=60, env=env)


def served(root: Path) -> Path:
    return (root / "html").resolve()


def make_tarball(path: Path, files: dict, top: str | None = None, with_link: bool = False) -> Path:
    """As IDR's release workflow makes it (`tar -zcvf ... -C _site ./`), or
    with one top directory (`top`)."""
    src = path.parent / (path.name + ".src")
    base = src / top if top else src
    for name, text in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)
    if with_link:
        (base / "secrets").symlink_to("/etc/shadow")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=".")
    return path


def test_archive_fetched_served_and_kept_when_a_fetch_fails(tmp_path):
    root = tmp_path / "srv-www"
    releases = tmp_path / "releases"
    releases.mkdir()
    first = make_tarball(releases / "v1" / "idr.openmicroscopy.org.tar.gz",
                         {"index.html": "site v1\n", "img/logo.svg": "<svg/>\n"}, with_link=True)
    make_tarball(releases / "v2" / "idr.openmicroscopy.org.tar.gz", {"index.html": "site v2\n"}, top="_site")
    source = f"file://{releases}/{{ref}}/idr.openmicroscopy.org.tar.gz"
    conf = config(tmp_path, root, websiteSource=source, websiteRef="v1", environment="prod")
    assert "IDR_WEBSITE_KIND=archive\n" in conf.read_text()
    done = fetch(conf)
    assert done.returncode == 0, done.stderr
    site = served(root)
    assert site.parent == root / "releases" and site.name.startswith("v1-")
    assert (root / "html" / "index.html").read_text() == "site v1\n"
    assert (root / "html" / "img" / "logo.svg").read_text() == "<svg/>\n"
    assert (root / "html" / "VERSION").read_text() == "prod\n"         # as IDR's deploy script writes it
    assert not (site / "secrets").exists() and not (site / "secrets").is_symlink()
    assert oct((site / "index.html").stat().st_mode & 0o777) == "0o644"
    # Again: nothing new to fetch, nothing changes.
    assert fetch(conf).returncode == 0 and served(root) == site
    # A new ref: the new site, from a tarball with one top directory.
    conf = config(tmp_path, root, websiteSource=source, websiteRef="v2")
    done = fetch(conf)
    assert done.returncode == 0, done.stderr
    assert (root / "html" / "index.html").read_text() == "site v2\n" and served(root) != site
    good = served(root)
    # Failures keep the site: a ref that is not there, a broken archive, a site without index.html.
    (releases / "broken").mkdir()
    (releases / "broken" / "idr.openmicroscopy.org.tar.gz").write_bytes(b"not a tarball")
    make_tarball(releases / "noindex" / "idr.openmicroscopy.org.tar.gz", {"about.html": "x\n"})
    for ref in ("missing", "broken", "noindex"):
        done = fetch(config(tmp_path, root, websiteSource=source, websiteRef=ref))
        assert done.returncode != 0, ref
        assert served(root) == good and (root / "html" / "index.html").read_text() == "site v2\n", ref
    assert "no index.html" in done.stderr
    assert sorted(p.name for p in (root / "releases").iterdir() if p.name.startswith(".stage")) == []
    # The first site back (still on disk: the last 3 are kept).
    assert fetch(config(tmp_path, root, websiteSource=source, websiteRef="v1")).returncode == 0
    assert served(root) == site
    assert first.exists()


def test_git_repository_at_a_pinned_commit_and_a_tag(tmp_path):
    git = git_bin()
    repo = tmp_path / "site-repo"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org", "HOME": str(tmp_path)}

    def run(*args):
        return subprocess.run([git, "-C", str(repo), *args], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    repo.mkdir()
    run("init", "-q", "-b", "main")
    (repo / "index.html").write_text("from git, first\n")
    run("add", "-A")
    run("commit", "-q", "-m", "first")
    first = run("rev-parse", "HEAD")
    run("tag", "2026.01.28")
    (repo / "index.html").write_text("from git, second\n")
    run("commit", "-q", "-am", "second")
    root = tmp_path / "srv-www"
    for source in (str(repo), f"file://{repo}"):
        conf = config(tmp_path, root, websiteSource=source, websiteRef=first)
        assert "IDR_WEBSITE_KIND=git\n" in conf.read_text()
        done = fetch(conf)
        assert done.returncode == 0, done.stderr
        assert (root / "html" / "index.html").read_text() == "from git, first\n"
        assert served(root).name == f"{first}-{first[:16]}"
        assert not (root / "html" / ".git").exists()
    done = fetch(config(tmp_path, root, websiteSource=str(repo), websiteRef="main"))
    assert done.returncode == 0, done.stderr
    assert (root / "html" / "index.html").read_text() == "from git, second\n"
    assert fetch(config(tmp_path, root, websiteSource=str(repo), websiteRef="2026.01.28")).returncode == 0
    assert (root / "html" / "index.html").read_text() == "from git, first\n"
    # A ref the repository does not have, or a repository that is not there: the site stays.
    before = served(root)
    for source, ref in ((str(repo), "0" * 40), (str(tmp_path / "nope"), "main")):
        assert fetch(config(tmp_path, root, websiteSource=source, websiteRef=ref)).returncode != 0
        assert served(root) == before


def test_step_files_pass_shellcheck_and_systemd(tmp_path):
    for raw in ({}, {"websiteRef": ""}, {"websiteSource": "https://github.com/IDR/site.git", "websiteRef": "main"}):
        s = proxy_settings(**raw)
        (tmp_path / "step.sh").write_text(install_script("test-proxy", website.website_files(s), website.setup_script(s)))
        done = subprocess.run([tool("shellcheck"), "-s", "bash", str(tmp_path / "step.sh"), str(SCRIPT)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
    units = {f.path: f.content for f in website.website_files(proxy_settings())}
    assert {website.FETCH_SCRIPT, website.CONFIG, f"{website.UNIT_DIR}/{website.SERVICE}",
            f"{website.UNIT_DIR}/{website.TIMER}"} <= set(units)
    assert f"ExecStart={website.FETCH_SCRIPT} {website.CONFIG}\n" in units[f"{website.UNIT_DIR}/{website.SERVICE}"]
    assert "OnUnitActiveSec=1h\n" in units[f"{website.UNIT_DIR}/{website.TIMER}"]
    # Off: only the page saying so, and the timer stopped.
    off = proxy_settings(websiteRef="")
    assert [f.path for f in website.website_files(off)] == [f"{website.PLACEHOLDER_DIR}/index.html"]
    assert f"systemctl disable --now {website.TIMER}" in website.setup_script(off)


def test_step_links_the_placeholder_until_a_fetch_succeeds(tmp_path):
    """The step's own script, run with IDR_ROOT in a scratch directory and
    stand-ins for dnf and systemctl that record what they were asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("dnf", "systemctl"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
        (bin_dir / name).chmod(0o755)
    (bin_dir / "hostname").write_text("#!/bin/sh\necho test-proxy\n")
    (bin_dir / "hostname").chmod(0o755)
    root = tmp_path / "host"
    for raw, linked in (({}, "placeholder"), ({"websiteRef": ""}, "placeholder")):
        s = proxy_settings(**raw)
        text = install_script("test-proxy", website.website_files(s), website.setup_script(s))
        text = text.replace(f"www={website.WWW_ROOT}\n", f"www={root}{website.WWW_ROOT}\n")
        text = text.replace(f"link={website.WEBSITE_LINK}\n", f"link={root}{website.WEBSITE_LINK}\n")
        done = subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=30,
                              env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "IDR_ROOT": str(root)})
        assert done.returncode == 0, done.stderr
        link = root / website.WEBSITE_LINK.lstrip("/")
        assert os.readlink(link) == linked
        assert "IDR's website" in (link / "index.html").read_text()
    # On again with a fetched site there: the step leaves the link alone.
    link = root / website.WEBSITE_LINK.lstrip("/")
    link.unlink()
    (link.parent / "releases/2026.07.02-0123456789abcdef").mkdir(parents=True)
    link.symlink_to("releases/2026.07.02-0123456789abcdef")
    s = proxy_settings()
    text = install_script("test-proxy", website.website_files(s), website.setup_script(s))
    text = text.replace(f"www={website.WWW_ROOT}\n", f"www={root}{website.WWW_ROOT}\n")
    text = text.replace(f"link={website.WEBSITE_LINK}\n", f"link={root}{website.WEBSITE_LINK}\n")
    subprocess.run(["bash", "-c", text], check=True, timeout=30,
                   env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "IDR_ROOT": str(root)})
    assert os.readlink(link) == "releases/2026.07.02-0123456789abcdef"
    recorded = calls.read_text()
    assert "systemctl enable --now idr-website.timer" in recorded
    assert "systemctl start --no-block idr-website.service" in recorded
    assert "systemctl disable --now idr-website.timer" in recorded


def test_units_pass_systemd_analyze_verify(tmp_path):
    """The service and timer as systemd reads them (the script's path moved
    into tmp, where the test puts it); a broken timer value is reported."""
    units = {Path(f.path).name: f.content for f in website.website_files(proxy_settings())
             if f.path.startswith(website.UNIT_DIR)}
    script = tmp_path / "idr-website-fetch"
    script.write_text(SCRIPT.read_text())
    script.chmod(0o755)
    for name, text in units.items():
        (tmp_path / name).write_text(text.replace(website.FETCH_SCRIPT, str(script)))
    analyze = tool("systemd-analyze")
    paths = [str(tmp_path / name) for name in sorted(units)]
    done = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    timer = tmp_path / website.TIMER
    timer.write_text(timer.read_text().replace("OnUnitActiveSec=1h", "OnUnitActiveSec=1hour-ish"))
    done = subprocess.run([analyze, "verify", str(timer)], capture_output=True, text=True)
    assert "Failed to parse timer value" in done.stderr
