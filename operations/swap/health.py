"""What the swap checks over HTTP: the new environment on its spare IP before
the public IP moves (the release gate, with IDR's smoke checks), how long the
public IP answered nothing, and the public IP at the end."""
from __future__ import annotations

import datetime as dt
import shlex
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

from components.swap_record import CONFIG_KEY as RECORD, Record

from ..common import OperationError, Pulumi
from .changes import Run
from .observe import BASTION, FLOATING_IP


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None   # the answer itself is what is judged


def http_ok(ip: str, port: int, path: str, timeout: float = 10.0) -> tuple[bool, str]:
    """200 on plain HTTP, or (idr:httpsRedirect) a redirect to HTTPS: an IP
    has no certificate of its own to verify, and the proxy answering the
    redirect is what shows it serves."""
    url = f"http://{ip}{'' if port == 80 else f':{port}'}{path}"
    try:
        with urllib.request.build_opener(_NoRedirect).open(url, timeout=timeout) as response:
            return response.status == 200, f"{url} answered {response.status}"
    except urllib.error.HTTPError as error:
        location = error.headers.get("Location", "") if error.headers else ""
        if error.code in (301, 302, 307, 308) and location.startswith("https://"):
            return True, f"{url} answered {error.code} to {location}"
        return False, f"{url} answered {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url} did not answer ({getattr(error, 'reason', error)})"


def poll(probe: Callable[[], tuple[bool, str]], seconds: float, interval: float) -> tuple[bool, str]:
    """`probe` until it succeeds or `seconds` have passed (once at least), `interval` seconds apart."""
    deadline = time.monotonic() + seconds
    while True:
        ok, detail = probe()
        if ok or time.monotonic() >= deadline:
            return ok, detail
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def smoke_gate(pulumi: Pulumi, stack: str, scheme: str) -> Callable[[str], list[str]]:
    """The smoke checks of `stack` at an address it holds, as its
    idr:serverName (TLS verified unless its certificate is self-signed)."""
    def check(ip: str) -> list[str]:
        from .. import smoke
        host, verify = smoke.stack_name_and_tls(pulumi, stack, scheme)
        return [str(f) for f in smoke.run_checks(f"{scheme}://{ip}", host, verify_tls=verify)]
    return check


def check_new(run: Run, r: Record, changed: bool) -> None:
    """The new environment answers on its spare IP, while it holds it and
    the public IP is still with the old one or free."""
    P, S, old, new = r.public_ip, r.spare_ip, run.old, run.new
    hP = run.holder(P).port_name
    if hP == new.port:
        return
    if not run.holds(new, S):
        run.say(f"({new.stack} holds no IP to be checked on now; it was checked before {P} was released)")
        return
    ok, detail = http_ok(S, run.http_port, new.health_path)
    if ok and run.smoke is None:
        run.say("WARNING: smoke checks skipped (--skip-smoke): only the health check gates this swap")
    elif ok and run.smoke is not None:
        failures = run.smoke(S)
        if failures:
            ok, detail = False, f"{len(failures)} smoke check(s) failed: " + "; ".join(failures)
        else:
            detail += "; smoke checks passed"
    if ok:
        run.say(f"check: {detail}")
        return
    if hP == old.port:
        if not changed:
            raise OperationError(f"{new.stack} is not healthy on its spare IP: {detail}. Nothing was changed")
        raise OperationError(
            f"{new.stack} is not healthy on its spare IP: {detail}. {P} has not moved: {old.stack} still serves "
            f"it. Fix {new.stack} and run `{run.command}` again, or end the swap here:\n"
            + "\n".join(f"  {line}" for line in _abandon_lines(run, r)))
    raise OperationError(
        f"{new.stack} is not healthy on its spare IP: {detail}, and {old.stack} has "
        f"already released {P}. Fix {new.stack} and run `{run.command}` again, or "
        f"give {P} back to {old.stack}:\n"
        f"  pulumi config set {FLOATING_IP} {P} -s {old.stack}\n"
        f"  pulumi up -s {old.stack} --policy-pack policy --target {shlex.quote(old.urn)}\n"
        f"  pulumi config rm {RECORD} -s {old.stack}\n"
        f"  pulumi config rm {RECORD} -s {new.stack}")


def _abandon_lines(run: Run, r: Record) -> list[str]:
    """The commands that end a swap whose public IP has not moved."""
    q, old, new = shlex.quote, run.old, run.new
    lines = []
    if new.ip != r.spare_ip or not run.holds(new, r.spare_ip):
        lines += [f"pulumi config set {FLOATING_IP} {r.spare_ip} -s {new.stack}",
                  f"pulumi config set {BASTION} {r.spare_ip} -s {new.stack}",
                  f"pulumi up -s {new.stack} --policy-pack policy --target {q(new.urn)}"]
    lines += [f"pulumi config rm {RECORD} -s {old.stack}",
              f"pulumi config rm {RECORD} -s {new.stack}"]
    if old.retained:  # marked for the move: without the record, its next update clears the flag
        lines.append(f"pulumi up -s {old.stack} --policy-pack policy --target {q(old.urn)}")
    return lines


def _since(stamp: str) -> Optional[float]:
    try:
        then = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt.datetime.now(dt.timezone.utc) - then).total_seconds()


def measure(run: Run, r: Record) -> Record:
    """How long the public IP answered nothing: from the moment this run
    asked OpenStack to move (or unbind) it, or the recorded moment of an
    earlier run, to its first answer after the move. The record to keep."""
    run.asked.measured = True
    P = r.public_ip
    ok, detail = poll(lambda: http_ok(P, run.http_port, run.new.health_path,
                                      timeout=max(1.0, min(10.0, run.wait_seconds))),
                      run.wait_seconds, run.poll_seconds)
    seconds: Optional[float]
    if run.asked.at is not None:
        asked_at, seconds, since = run.asked.utc, time.monotonic() - run.asked.at, f"at {run.asked.utc}"
    elif r.asked_at:
        asked_at, seconds, since = r.asked_at, _since(r.asked_at), f"at {r.asked_at}, in an earlier run"
    else:
        asked_at, seconds, since = "", None, ""
    if not ok:
        run.say(f"WARNING: {P} does not answer yet: {detail}")
        return r.but(asked_at=asked_at)
    if seconds is None:
        run.say(f"{P} answers again ({detail}); how long it answered nothing is not known (the run that "
                f"moved it stopped before it could say)")
        return r
    seconds = round(seconds, 1)
    run.say(f"{P} answered nothing for at most {seconds:.1f} s: the swap asked OpenStack to move it {since}, "
            f"and {detail} {seconds:.1f} s later.")
    return r.but(asked_at=asked_at, unbound_seconds=seconds)


def final_check(run: Run, public_ip: str, rollback: str) -> int:
    """The public IP answers at the end (0), or a warning with the rollback (1)."""
    ok, detail = poll(lambda: http_ok(public_ip, run.http_port, run.new.health_path), run.wait_seconds, 2.0)
    if ok:
        run.say(f"check: {detail}")
        return 0
    run.say(f"WARNING: the public IP does not answer: {detail}. To roll back: `{rollback}`")
    return 1
