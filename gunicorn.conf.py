"""gunicorn reads this file from the working directory (scripts/start.sh, the Dockerfile).

Closed unless opened on purpose: bound beyond loopback without both BASIC_AUTH_USER and
BASIC_AUTH_PASS, gunicorn refuses to start (before it binds) and says which variables to set."""

import os


def _addresses(cfg) -> list[str]:
    out = []
    for a in cfg.address:
        out.append(
            f"unix:{a}"
            if isinstance(a, str)
            else f"[{a[0]}]:{a[1]}"
            if ":" in str(a[0])
            else f"{a[0]}:{a[1]}"
        )
    return out


def on_starting(server):
    from alllabel.backend.security import check_credentials, refusal

    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    try:
        check_credentials(user, password)
    except ValueError as e:
        raise RuntimeError(str(e)) from None
    why = refusal(",".join(_addresses(server.cfg)), user, password)
    if why:
        raise RuntimeError(why)  # gunicorn prints "Error: <why>" and exits 1


def worker_exit(server, worker):
    """A worker leaving (SIGTERM, or its master gone): stop the controllers and runs now, or Python
    would wait for a long pre-annotation run to finish while a new worker takes over the state."""
    import sys

    wsgi = sys.modules.get("_wsgi")
    app = getattr(wsgi, "__dict__", {}).get("app") if wsgi else None
    if app is not None:
        app.config["backend"].orchestrator.close()
